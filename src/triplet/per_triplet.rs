//! Batch-hard and semi-hard: the miner selects one triplet per anchor or per
//! anchor-positive pair, and each selected triplet is accumulated on its own. Its two
//! distances are recomputed directly (`sum (a_i - b_i)^2`, as the explicit-triplet loss
//! does), its term added to the totals, and for the gradient its three rows updated in
//! one pass ([`triplet_update`]; cosine goes pair by pair through [`pair_grad`]).

use super::batch::Totals;
use super::BatchParams;
use crate::distance::{
    distance_with, euclidean_from_sq, euclidean_grad_factor, pair_grad_rows_with, Metric,
    TINY_DISTANCE,
};
use crate::error::Error;
use crate::matrix::{three_rows_mut, Matrix};
use crate::mining::{
    block_rows, for_row_blocks, hard_sweep, EmitHard, EmitPairs, HardState, HardestPair, Mining,
    SemiBlock, Sink, TILE,
};
use crate::reduce::Hinge;
use crate::simd::{Backend, Simd};
use crate::workspace::Carve;

/// [`pair_grad_rows_with`] for rows `i`, `j` of `x`, their clamped norms read from
/// `norms` (cosine only).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn pair_grad<S: Simd>(
    s: S,
    metric: Metric,
    x: &Matrix<'_>,
    norms: &[f32],
    i: usize,
    j: usize,
    dist: f32,
    coef: f32,
    grad: &mut [f32],
) {
    let nrm = |k: usize| norms.get(k).copied().unwrap_or(1.0);
    pair_grad_rows_with(
        s,
        metric,
        x,
        (i, j),
        dist,
        (nrm(i), nrm(j)),
        0.0,
        coef,
        grad,
    );
}

/// `(|a - p|^2, |a - q|^2)` computed directly, in one pass over the three rows (one
/// lane-wise accumulator each).
#[inline(always)]
pub(super) fn two_sq_dists<S: Simd>(s: S, a: &[f32], p: &[f32], q: &[f32]) -> (f32, f32) {
    let l = S::LANES;
    let (mut sp, mut sq) = (s.zero(), s.zero());
    let (mut ai, mut pi, mut qi) = (a.chunks_exact(l), p.chunks_exact(l), q.chunks_exact(l));
    for ((ac, pc), qc) in ai.by_ref().zip(pi.by_ref()).zip(qi.by_ref()) {
        let av = s.load(ac);
        let dp = s.sub(av, s.load(pc));
        let dq = s.sub(av, s.load(qc));
        sp = s.fma(dp, dp, sp);
        sq = s.fma(dq, dq, sq);
    }
    let (ar, pr, qr) = (ai.remainder(), pi.remainder(), qi.remainder());
    if !ar.is_empty() {
        // Zero padding adds exact zeros.
        let av = s.load(ar);
        let dp = s.sub(av, s.load(pr));
        let dq = s.sub(av, s.load(qr));
        sp = s.fma(dp, dp, sp);
        sq = s.fma(dq, dq, sq);
    }
    (s.reduce_add(sp), s.reduce_add(sq))
}

/// One triplet's Euclidean-type update in one pass: `ga += kp (a - p) - kq (a - q)`,
/// `gp -= kp (a - p)`, `gq += kq (a - q)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn triplet_update<S: Simd>(
    s: S,
    kp: f32,
    kq: f32,
    a: &[f32],
    p: &[f32],
    q: &[f32],
    [ga, gp, gq]: [&mut [f32]; 3],
) {
    let k = [s.splat(kp), s.splat(-kp), s.splat(kq), s.splat(-kq)];
    let l = S::LANES;
    let (mut ai, mut pi, mut qi) = (a.chunks_exact(l), p.chunks_exact(l), q.chunks_exact(l));
    let (mut gai, mut gpi, mut gqi) = (
        ga.chunks_exact_mut(l),
        gp.chunks_exact_mut(l),
        gq.chunks_exact_mut(l),
    );
    for (((((ac, pc), qc), gac), gpc), gqc) in ai
        .by_ref()
        .zip(pi.by_ref())
        .zip(qi.by_ref())
        .zip(gai.by_ref())
        .zip(gpi.by_ref())
        .zip(gqi.by_ref())
    {
        triplet_step(s, k, [ac, pc, qc], [gac, gpc, gqc]);
    }
    let (ar, pr, qr) = (ai.remainder(), pi.remainder(), qi.remainder());
    if !ar.is_empty() {
        let g = [
            gai.into_remainder(),
            gpi.into_remainder(),
            gqi.into_remainder(),
        ];
        triplet_step(s, k, [ar, pr, qr], g);
    }
}

/// One vector of [`triplet_update`]; `k = [kp, -kp, kq, -kq]`.
#[inline(always)]
fn triplet_step<S: Simd>(
    s: S,
    k: [S::V; 4],
    [ac, pc, qc]: [&[f32]; 3],
    [ga, gp, gq]: [&mut [f32]; 3],
) {
    let [vkp, nkp, vkq, nkq] = k;
    let av = s.load(ac);
    let dp = s.sub(av, s.load(pc));
    let dq = s.sub(av, s.load(qc));
    s.store(s.fma(dq, nkq, s.fma(dp, vkp, s.load(ga))), ga);
    s.store(s.fma(dp, nkp, s.load(gp)), gp);
    s.store(s.fma(dq, vkq, s.load(gq)), gq);
}

/// The loss (and gradient) accumulator of batch-hard and semi-hard: each selected triplet's
/// two distances recomputed directly (as
/// [`triplet_margin_loss`](super::triplet_margin_loss) does), its term added, its two
/// pairs updated.
struct LossAcc<'a, 'g> {
    x: Matrix<'a>,
    norms: &'a [f32],
    metric: Metric,
    margin: f32,
    hinge: Hinge,
    totals: Totals,
    grad: Option<&'g mut [f32]>,
}

impl Sink for LossAcc<'_, '_> {
    #[inline(always)]
    fn triplet<S: Simd>(&mut self, s: S, a: usize, p: usize, q: usize) {
        let (Some(xa), Some(xp), Some(xq)) = (self.x.row(a), self.x.row(p), self.x.row(q)) else {
            return;
        };
        let metric = self.metric;
        let (dap, daq) = match metric {
            Metric::SquaredEuclidean => two_sq_dists(s, xa, xp, xq),
            Metric::Euclidean => {
                let (sp, sq) = two_sq_dists(s, xa, xp, xq);
                (
                    euclidean_from_sq(sp, xa, xp, 0.0),
                    euclidean_from_sq(sq, xa, xq, 0.0),
                )
            }
            Metric::Cosine => {
                let nrm = |i: usize| self.norms.get(i).copied().unwrap_or(1.0);
                let (na, np, nq) = (nrm(a), nrm(p), nrm(q));
                (
                    distance_with(s, metric, xa, xp, na, np),
                    distance_with(s, metric, xa, xq, na, nq),
                )
            }
        };
        let v = dap - daq + self.margin;
        self.totals
            .add(self.hinge.apply(v), self.hinge.is_active(v));
        let Some(g) = self.grad.as_deref_mut() else {
            return;
        };
        let sl = self.hinge.slope(v);
        if sl == 0.0 {
            return;
        }
        let k = |dist: f32| euclidean_grad_factor(metric == Metric::SquaredEuclidean, sl, dist);
        // Cosine, and Euclidean pairs so close that `sl / dist` could overflow, take the
        // pair helper (its scaled path); the rest the fused three-row update.
        let tiny = metric == Metric::Euclidean && dap.min(daq) < TINY_DISTANCE;
        // Rows that coincide (only in given choices, never in mined ones: a positive or
        // negative that is the anchor itself, or one row as both) also take the pair
        // helper, which adds nothing for a row paired with itself.
        let rows = if metric == Metric::Cosine || tiny {
            None
        } else {
            three_rows_mut(g, self.x.dim(), a, p, q)
        };
        if let Some(rows) = rows {
            triplet_update(s, k(dap), k(daq), xa, xp, xq, rows);
        } else {
            pair_grad(s, metric, &self.x, self.norms, a, p, dap, sl, g);
            pair_grad(s, metric, &self.x, self.norms, a, q, daq, -sl, g);
        }
    }
}

/// The batch-hard or semi-hard totals of a batch (`xs`, its [`metric_norms`] `norms`):
/// mines the triplets (tile sweep or row blocks) and feeds each to a [`LossAcc`], which
/// also accumulates the gradient into `grad` when given. `ws` is the rest of the
/// workspace.
///
/// [`metric_norms`]: crate::distance::metric_norms
#[inline(always)]
pub(super) fn mined_totals(
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
    let mut acc = LossAcc {
        x: xs,
        norms,
        metric,
        margin,
        hinge,
        totals: Totals::default(),
        grad,
    };
    if params.mining == Mining::BatchHard {
        let mut st = HardState::take(&mut ws, n)?;
        let t = n.min(TILE);
        let tile = ws.take(t * t)?;
        let pack = ws.rest();
        hard_sweep(backend, &xs, labels, metric, norms, &mut st, tile, pack)?;
        backend.dispatch(EmitHard {
            st: &st,
            sink: &mut acc,
        });
    } else {
        let scratch = ws.take(2 * n)?;
        let block = ws.take(block_rows(n) * n)?;
        let pack = ws.rest();
        for_row_blocks(backend, &xs, metric, norms, block, pack, |i0, _, blk| {
            backend.dispatch(SemiBlock {
                block: blk,
                i0,
                labels,
                scratch: &mut *scratch,
                sink: &mut acc,
            });
            Ok(())
        })?;
    }
    Ok(acc.totals)
}

/// The batch-hard totals of given choices (one triplet per anchor whose positive and
/// negative are both set, ascending anchors), fed to a [`LossAcc`] as [`mined_totals`]
/// does after its sweep; also accumulates the gradient into `grad` when given.
#[inline(always)]
pub(super) fn pairs_totals(
    backend: Backend,
    xs: Matrix<'_>,
    pairs: &[HardestPair],
    norms: &[f32],
    params: &BatchParams,
    grad: Option<&mut [f32]>,
) -> Totals {
    let mut acc = LossAcc {
        x: xs,
        norms,
        metric: params.metric,
        margin: params.margin,
        hinge: params.hinge,
        totals: Totals::default(),
        grad,
    };
    backend.dispatch(EmitPairs {
        pairs,
        sink: &mut acc,
    });
    acc.totals
}
