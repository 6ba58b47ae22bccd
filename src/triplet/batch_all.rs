//! Batch-all: every valid triplet of the batch, never listed one by one. Per block of
//! anchor rows (their distance rows from [`for_row_blocks`]), each anchor's positives are
//! swept over its negatives, four positives per vector pass for the relu hinge
//! ([`relu_group`]; [`soft_pair`] for the soft margin), giving the loss terms and the
//! pair coefficients. The gradient is then GEMM-shaped ([`coefficient_row`], then
//! [`gemm_acc`] and [`symmetrise`] from the distance module), see [`AllBlock`].

use super::batch::Totals;
use super::per_triplet::pair_grad;
use super::BatchParams;
use crate::distance::{
    cosine_own_factor, euclidean_grad_factor, gemm_acc, needs_direct, symmetrise, Metric, GEMM_MR,
};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::{block_rows, for_row_blocks};
use crate::reduce::Hinge;
use crate::simd::{self, Backend, Kernel, Simd, MAX_LANES};
use crate::workspace::Carve;

/// Extra per-row arrays of the batch-all gradient: the coefficient row, the diagonal
/// terms and the GEMM's packed coefficients (`GEMM_MR` per row).
pub(super) const ALL_GRAD_ARRAYS: usize = 2 + GEMM_MR;

/// Width of the fixed-size chunks that [`coefficient_row`] walks its row in (loops over
/// a whole chunk vectorise, whatever the backend's lane count), and so the number of
/// partial sums it keeps for the anchor's diagonal term.
const CHUNK: usize = 16;

/// Sum of a chunk's partial sums in a fixed tree order (halves added pairwise).
#[inline(always)]
fn sum_lanes(v: &[f32; CHUNK]) -> f32 {
    let mut h = *v;
    let mut half = CHUNK / 2;
    while half > 0 {
        for l in 0..half {
            if let (Some(&hi), Some(lo)) = (h.get(l + half), h.get(l)) {
                h[l] = lo + hi;
            }
        }
        half /= 2;
    }
    h[0]
}

/// Positives swept together by [`relu_group`]: their terms share each load of the
/// negatives' distances and each update of the coefficients.
pub(super) const GROUP: usize = 4;

/// Up to [`GROUP`] anchor-positive pairs of batch-all under the relu hinge: for every
/// negative distance `m_q` of `masked` (NaN elsewhere) and each `base_g` of `bases`,
/// `v = base_g - m_q`; returns per pair the sum of `max(v, 0)` and the number of `v > 0`
/// (lane-wise `f32` accumulators over the chunks in order, then the backend's lane sum:
/// the same arithmetic, pair by pair, as one pair at a time), and subtracts the slopes
/// (0 or 1, so their sum is exact) from `coef[q]` when given. A NaN base adds nothing.
///
/// The slope is `min(max(v, 0) * 2^149, 1)`, computed in two exact scalings: 0 for
/// `v <= 0` (or NaN), 1 for every `v > 0` down to the smallest subnormal.
#[inline(always)]
pub(super) fn relu_group<S: Simd>(
    s: S,
    masked: &[f32],
    bases: &[f32; GROUP],
    coef: Option<&mut [f32]>,
) -> ([f32; GROUP], [f32; GROUP]) {
    let l = S::LANES;
    let zero = s.zero();
    let one = s.splat(1.0);
    let (up1, up2) = (
        s.splat(f32::from_bits(253 << 23)),
        s.splat(f32::from_bits(150 << 23)),
    );
    let vb: [S::V; GROUP] = bases.map(|b| s.splat(b));
    let mut hs = [zero; GROUP];
    let mut on = [zero; GROUP];
    // One chunk of negatives against the group; returns the chunk's summed slopes.
    let mut step = |m: S::V| {
        let mut count = zero;
        for ((&b, h_acc), o_acc) in vb.iter().zip(hs.iter_mut()).zip(on.iter_mut()) {
            let h = s.max(s.sub(b, m), zero);
            let sl = s.min(s.mul(s.mul(h, up1), up2), one);
            *h_acc = s.add(*h_acc, h);
            *o_acc = s.add(*o_acc, sl);
            count = s.add(count, sl);
        }
        count
    };
    let mut chunks = masked.chunks_exact(l);
    // Padding lanes of the tail are NaN: no term, no slope.
    let mut tail = [f32::NAN; MAX_LANES];
    for (t, &m) in tail.iter_mut().zip(chunks.remainder()) {
        *t = m;
    }
    let rem = chunks.remainder().len();
    if let Some(coef) = coef {
        let mut cc = coef.chunks_exact_mut(l);
        for (m, c) in chunks.by_ref().zip(cc.by_ref()) {
            let count = step(s.load(m));
            s.store(s.sub(s.load(c), count), c);
        }
        if rem > 0 {
            let count = step(s.load(&tail));
            let c = cc.into_remainder();
            s.store(s.sub(s.load(c), count), c);
        }
    } else {
        for m in chunks.by_ref() {
            step(s.load(m));
        }
        if rem > 0 {
            step(s.load(&tail));
        }
    }
    (hs.map(|h| s.reduce_add(h)), on.map(|o| s.reduce_add(o)))
}

/// The gradient buffers of the batch-all loss.
struct AllGrad<'o> {
    /// Pair coefficients of the current anchor (`n`).
    coef: &'o mut [f32],
    /// Diagonal terms: `grad_i += diag_i * x_i` at the end (`n`).
    diag: &'o mut [f32],
    /// The GEMM's packed coefficients (`GEMM_MR * n`).
    cpack: &'o mut [f32],
    grad: &'o mut [f32],
}

/// Batch-all loss over a block of anchor rows `i0..` (`block`: their distance rows), with
/// its gradient when `grad` is given.
///
/// Per anchor `a`, its positives `p` (listed once per run of equal anchor labels) are
/// swept over the row's negatives four at a time (one vector pass per group for the relu
/// hinge), giving the pair coefficients `c_aj` (`+sum of slopes` for `j = p`,
/// `-sum of slopes` for a negative). The gradient of the block is then GEMM-shaped: with
/// `k_aj` the factor of `d d(a, j) / d a = k_aj (x_a - x_j)` (`2 c`, `c / d`) or the
/// cosine terms, the block's row of `G` is `-k_aj` and the diagonal terms collect
/// `sum_j k_aj`, so that `grad[block] += G X` and `grad += G^T X[block]`, plus
/// `diag * X` at the end. Pairs whose distance is small against their norms (the
/// accuracy fix-up's test) are updated in difference form instead.
struct AllBlock<'a, 'o> {
    x: Matrix<'a>,
    labels: &'a [u32],
    norms: &'a [f32],
    metric: Metric,
    hinge: Hinge,
    margin: f32,
    i0: usize,
    block: &'o mut [f32],
    masked: &'o mut [f32],
    /// Scratch for the positives of an anchor (`n` row indices).
    pos: &'o mut [u32],
    totals: &'o mut Totals,
    grad: Option<AllGrad<'o>>,
}

/// Writes the indices of the rows labelled `label` to the front of `out`, ascending, and
/// returns how many there are (rows past `out.len()` or past `u32::MAX` are not listed;
/// the caller provides one slot per row and rows fit a `u32` by the batch's checks).
#[inline(always)]
pub(super) fn list_label(labels: &[u32], label: u32, out: &mut [u32]) -> usize {
    let mut len = 0;
    for (j, &l) in labels.iter().enumerate() {
        if l == label {
            if let (Some(slot), Ok(j)) = (out.get_mut(len), u32::try_from(j)) {
                *slot = j;
                len += 1;
            }
        }
    }
    len
}

impl Kernel for AllBlock<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let AllBlock {
            x,
            labels,
            norms,
            metric,
            hinge,
            margin,
            i0,
            block,
            masked,
            pos,
            totals,
            mut grad,
        } = self;
        let n = labels.len();
        if n == 0 || masked.len() != n || norms.len() != n || pos.len() != n {
            return;
        }
        let (mut pos_label, mut pos_len) = (None, 0);
        for (r, row) in block.chunks_exact_mut(n).enumerate() {
            let a = i0 + r;
            let Some(&la) = labels.get(a) else {
                return;
            };
            let mut negs = 0_u32;
            for ((m, &v), &l) in masked.iter_mut().zip(row.iter()).zip(labels) {
                let neg = l != la;
                *m = if neg { v } else { f32::NAN };
                negs += u32::from(neg);
            }
            let negs = negs as usize;
            if let Some(g) = grad.as_mut() {
                g.coef.fill(0.0);
            }
            if negs > 0 {
                // The anchor's positives, ascending: the rows of its label (listed once
                // per run of equal anchor labels) other than itself.
                if pos_label != Some(la) {
                    pos_len = list_label(labels, la, pos);
                    pos_label = Some(la);
                }
                let mut positives = pos
                    .get(..pos_len)
                    .unwrap_or(&[])
                    .iter()
                    .map(|&p| p as usize)
                    .filter(|&p| p != a);
                loop {
                    // The next group of positives (`usize::MAX` and a NaN base mark an
                    // empty slot, which adds nothing).
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
                coefficient_row(s, metric, &x, norms, a, row, g);
            }
        }
        let Some(g) = grad else {
            return;
        };
        let d = x.dim();
        let rows = block.len() / n;
        let i1 = i0 + rows;
        // The block's own columns: G[a][j] and G[j][a] both in the block, summed into one
        // symmetric coefficient so the anchor side alone applies them.
        symmetrise(s, block, n, i0, rows);
        let block = &*block;
        let (Some(xb), Some((head, rest))) = (
            x.as_slice().get(i0 * d..i1 * d),
            g.grad.split_at_mut_checked(i0 * d),
        ) else {
            return;
        };
        let Some((ga, tail)) = rest.split_at_mut_checked(rows * d) else {
            return;
        };
        // Anchor side: grad[a] += sum_j G[a][j] x_j.
        gemm_acc(s, block, n, 1, x.as_slice(), d, ga, g.cpack);
        // Column side, outside the block: grad[j] += sum_a G[a][j] x_a.
        gemm_acc(s, block, 1, n, xb, d, head, g.cpack);
        gemm_acc(
            s,
            block.get(i1..).unwrap_or(&[]),
            1,
            n,
            xb,
            d,
            tail,
            g.cpack,
        );
    }
}

/// One anchor-positive pair of batch-all under the soft margin, the counterpart of
/// [`relu_group`]: for every negative distance `m` of `masked` (NaN elsewhere),
/// `v = base - m`, the term `ln(1 + e^v)` computed per term and summed in `f64`; returns
/// the sum, the number of active terms and the sum of the slopes, and subtracts each slope
/// from `coef[q]` when given.
#[inline(always)]
pub(super) fn soft_pair(masked: &[f32], base: f32, coef: Option<&mut [f32]>) -> (f64, usize, f32) {
    let (mut sum, mut active, mut slopes) = (0.0_f64, 0_usize, 0.0_f32);
    let hinge = Hinge::SoftPlus;
    match coef {
        Some(coef) => {
            for (&m, c) in masked.iter().zip(coef.iter_mut()) {
                if !m.is_nan() {
                    let v = base - m;
                    sum += f64::from(hinge.apply(v));
                    active += usize::from(hinge.is_active(v));
                    let sl = hinge.slope(v);
                    *c -= sl;
                    slopes += sl;
                }
            }
        }
        None => {
            for &m in masked {
                if !m.is_nan() {
                    let v = base - m;
                    sum += f64::from(hinge.apply(v));
                    active += usize::from(hinge.is_active(v));
                }
            }
        }
    }
    (sum, active, slopes)
}

/// Turns anchor `a`'s pair coefficients (`g.coef`) and distances (`row`) into its row of
/// the GEMM coefficients `G` (written over `row`) and the diagonal terms; near pairs are
/// updated in difference form directly.
#[inline(always)]
fn coefficient_row<S: Simd>(
    s: S,
    metric: Metric,
    x: &Matrix<'_>,
    norms: &[f32],
    a: usize,
    row: &mut [f32],
    g: &mut AllGrad<'_>,
) {
    let Some(&na) = norms.get(a) else {
        return;
    };
    let mut diag_a = [0.0_f32; CHUNK];
    match metric {
        Metric::SquaredEuclidean | Metric::Euclidean => {
            let squared = metric == Metric::SquaredEuclidean;
            // Near pairs (rare): difference form, then out of the GEMM.
            let mut near = 0_u32;
            for ((&dist, &c), &nj) in row.iter().zip(g.coef.iter()).zip(norms) {
                near += u32::from((c != 0.0) & needs_direct(dist, squared, na, nj));
            }
            if near > 0 {
                for (j, ((&dist, c), &nj)) in
                    row.iter().zip(g.coef.iter_mut()).zip(norms).enumerate()
                {
                    if *c != 0.0 && needs_direct(dist, squared, na, nj) {
                        pair_grad(s, metric, x, norms, a, j, dist, *c, g.grad);
                        *c = 0.0;
                    }
                }
            }
            let (rc, rt) = row.as_chunks_mut::<CHUNK>();
            let (cc, ct) = g.coef.as_chunks::<CHUNK>();
            let (dc, dt) = g.diag.as_chunks_mut::<CHUNK>();
            // Whole chunks: one loop per metric, the division done unconditionally and
            // then selected, so that the compiler vectorises it (the branchy closure form
            // stays scalar).
            let chunks = rc.iter_mut().zip(cc).zip(dc.iter_mut());
            if squared {
                for ((r, c), dg) in chunks {
                    for l in 0..CHUNK {
                        let k = 2.0 * c[l];
                        r[l] = -k;
                        dg[l] += k;
                        diag_a[l] += k;
                    }
                }
            } else {
                for ((r, c), dg) in chunks {
                    // In local arrays: the row and the diagonal terms are slices the
                    // compiler cannot prove disjoint.
                    let (rv, cv, mut dv) = (*r, *c, *dg);
                    let mut k = [0.0_f32; CHUNK];
                    for l in 0..CHUNK {
                        let q = cv[l] / rv[l];
                        k[l] = if rv[l] > 0.0 { q } else { 0.0 };
                    }
                    for l in 0..CHUNK {
                        dv[l] += k[l];
                        diag_a[l] += k[l];
                    }
                    *r = k.map(|v| -v);
                    *dg = dv;
                }
            }
            for (l, ((r, &c), dg)) in rt.iter_mut().zip(ct).zip(dt.iter_mut()).enumerate() {
                let k = euclidean_grad_factor(squared, c, *r);
                *r = -k;
                *dg += k;
                if let Some(da) = diag_a.get_mut(l) {
                    *da += k;
                }
            }
        }
        Metric::Cosine => {
            for (l, (((r, &c), &nj), dg)) in row
                .iter_mut()
                .zip(g.coef.iter())
                .zip(norms)
                .zip(g.diag.iter_mut())
                .enumerate()
            {
                let dist = *r;
                *r = -c / (na * nj);
                *dg += cosine_own_factor(c, dist, nj);
                if let Some(da) = diag_a.get_mut(l % CHUNK) {
                    *da += cosine_own_factor(c, dist, na);
                }
            }
        }
    }
    if let Some(da) = g.diag.get_mut(a) {
        *da += sum_lanes(&diag_a);
    }
}

/// `grad_i += diag_i * x_i` for every row.
struct AddDiag<'a, 'o> {
    x: Matrix<'a>,
    diag: &'a [f32],
    grad: &'o mut [f32],
}

impl Kernel for AddDiag<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let d = self.x.dim();
        for (i, (row, &k)) in self.x.row_iter().zip(self.diag).enumerate() {
            if let Some(g) = self.grad.get_mut(i * d..(i + 1) * d) {
                simd::axpy_with(s, k, row, g);
            }
        }
    }
}

/// The batch-all totals of a batch (`xs`, its [`metric_norms`] `norms`): blocks of anchor
/// rows with their distances ([`for_row_blocks`]), each swept by an [`AllBlock`], which
/// also accumulates the gradient into `grad` when given; the diagonal terms are added at
/// the end ([`AddDiag`]). `ws` is the rest of the workspace.
///
/// [`metric_norms`]: crate::distance::metric_norms
#[inline(always)]
pub(super) fn all_totals(
    backend: Backend,
    xs: Matrix<'_>,
    labels: &[u32],
    norms: &[f32],
    params: &BatchParams,
    grad: Option<&mut [f32]>,
    mut ws: Carve<'_>,
) -> Result<Totals, Error> {
    let n = xs.rows();
    let (metric, hinge, margin) = (params.metric, params.hinge, params.margin);
    let masked = ws.take(n)?;
    let pos = ws.take_u32(n)?;
    let mut bufs = match grad {
        Some(g) => {
            let coef = ws.take(n)?;
            let diag = ws.take(n)?;
            let cpack = ws.take(GEMM_MR * n)?;
            diag.fill(0.0);
            Some((coef, diag, cpack, g))
        }
        None => None,
    };
    let block = ws.take(block_rows(n) * n)?;
    let mut totals = Totals::default();
    let pack = ws.rest();
    for_row_blocks(backend, &xs, metric, norms, block, pack, |i0, _, blk| {
        backend.dispatch(AllBlock {
            x: xs,
            labels,
            norms,
            metric,
            hinge,
            margin,
            i0,
            block: blk,
            masked: &mut *masked,
            pos: &mut *pos,
            totals: &mut totals,
            grad: bufs.as_mut().map(|(coef, diag, cpack, grad)| AllGrad {
                coef,
                diag,
                cpack,
                grad,
            }),
        });
        Ok(())
    })?;
    if let Some((_, diag, _, grad)) = bufs {
        backend.dispatch(AddDiag { x: xs, diag, grad });
    }
    Ok(totals)
}
