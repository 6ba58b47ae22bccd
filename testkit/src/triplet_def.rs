//! An independent `f64` definition of the triplet losses (for tolerances and finite
//! differences) and the documented bounds of `triplet_margin_loss(_grad)` and
//! `triplet_batch_loss(_grad)` over its evaluated triplets.

use crate::rows::underflow_allowance;
use crate::{EPS, TINY, U};
use triplet_kernels::{
    mine_triplets, mine_triplets_count, mine_triplets_workspace_len, scalar, BatchParams, Hinge,
    Matrix, Metric, Mining, Reduction, Triplet, TripletParams,
};

/// Row indices of a triplet.
pub type Idx3 = (usize, usize, usize);

/// The row indices of `t`.
pub fn idx3(t: Triplet) -> Idx3 {
    (t.anchor as usize, t.positive as usize, t.negative as usize)
}

pub fn row(x: &[f64], d: usize, i: usize) -> &[f64] {
    &x[i * d..(i + 1) * d]
}

pub fn norm(a: &[f64]) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// `d(a, b)` with PyTorch's shift `eps`.
pub fn dist(metric: Metric, a: &[f64], b: &[f64], eps: f64) -> f64 {
    let sq: f64 = a.iter().zip(b).map(|(u, v)| (u - v + eps).powi(2)).sum();
    match metric {
        Metric::SquaredEuclidean => sq,
        Metric::Euclidean => sq.sqrt(),
        Metric::Cosine => {
            let dot: f64 = a.iter().zip(b).map(|(u, v)| u * v).sum();
            1.0 - dot / (norm(a).max(1e-12) * norm(b).max(1e-12))
        }
        _ => unreachable!("a variant this test does not know"),
    }
}

/// Sum of the absolute values the distance bound is relative to.
pub fn dist_scale(metric: Metric, a: &[f64], b: &[f64], eps: f64) -> f64 {
    match metric {
        Metric::Cosine => 2.0,
        m => dist(m, a, b, eps),
    }
}

/// [`dist_scale`] plus the underflow allowance of the rows' length (scaled so that the
/// distance bound `4 (d / 8 + 12) 2^-23` times it covers at least the allowance).
pub fn dist_scale_underflow(metric: Metric, a: &[f64], b: &[f64], eps: f64) -> f64 {
    match metric {
        Metric::Cosine => 2.0,
        m => dist(m, a, b, eps) + underflow_allowance(m, a.len()) / (4.0 * EPS),
    }
}

/// Largest `|d d(a, b) / d a_e|` over the elements (the size of one gradient update).
pub fn grad_scale(metric: Metric, a: &[f64], b: &[f64], eps: f64) -> f64 {
    match metric {
        Metric::SquaredEuclidean => {
            2.0 * a
                .iter()
                .zip(b)
                .map(|(u, v)| (u - v + eps).abs())
                .fold(0.0, f64::max)
        }
        Metric::Euclidean => 1.0,
        Metric::Cosine => {
            let (na, nb) = (norm(a).max(1e-12), norm(b).max(1e-12));
            let ma = a.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
            let mb = b.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
            mb / (na * nb) + 2.0 * ma / (na * na)
        }
        _ => unreachable!("a variant this test does not know"),
    }
}

pub fn hinge64(h: Hinge, v: f64) -> f64 {
    match h {
        Hinge::Relu => v.max(0.0),
        Hinge::SoftPlus => v.max(0.0) + (-v.abs()).exp().ln_1p(),
        _ => unreachable!("a variant this test does not know"),
    }
}

pub fn slope64(h: Hinge, v: f64) -> f64 {
    match h {
        Hinge::Relu => f64::from(u8::from(v > 0.0)),
        Hinge::SoftPlus => 1.0 / (1.0 + (-v).exp()),
        _ => unreachable!("a variant this test does not know"),
    }
}

pub fn weight(r: Reduction, k: usize, active: usize) -> f64 {
    let div = match r {
        Reduction::Sum => return 1.0,
        Reduction::Mean => k,
        Reduction::MeanNonzero => active,
        _ => unreachable!("a variant this test does not know"),
    };
    if div == 0 {
        0.0
    } else {
        1.0 / div as f64
    }
}

/// The weight of each term under `r` for these evaluated triplets (`hinge` decides
/// which are active, the divisor of `MeanNonzero`).
pub fn eval_weight(evals: &[Eval], hinge: Hinge, r: Reduction) -> f64 {
    let active = evals
        .iter()
        .filter(|e| hinge == Hinge::SoftPlus || e.v > 0.0)
        .count();
    weight(r, evals.len(), active)
}

/// When the kernels normalise rows of `d` first, they see `f32`-rounded unit rows: each
/// element within this of the exact one.
pub fn normalized_dy(d: usize) -> f64 {
    4.0 * (d as f64 / 8.0 + 12.0) * EPS
}

/// The extra error of each margin value when both kernels normalise rows of `d` first: a
/// distance moves by at most `|grad|_1 dy <= 4 sqrt(d) dy` per rounded row
/// ([`normalized_dy`]), two rows per distance, two distances per margin value. Add it
/// through [`Allow::dv_extra`].
pub fn normalized_dv_extra(d: usize) -> f64 {
    16.0 * (d as f64).sqrt() * normalized_dy(d)
}

/// Bound on the second derivative of a distance `dist` of `metric` (how far a gradient
/// moves with its rows).
pub fn hess_scale(metric: Metric, dist: f64) -> f64 {
    match metric {
        Metric::SquaredEuclidean => 4.0,
        Metric::Euclidean => {
            if dist > 0.0 {
                4.0 / dist
            } else {
                0.0
            }
        }
        Metric::Cosine => 8.0,
        _ => unreachable!("a variant this test does not know"),
    }
}

/// Widens the per-row gradient tolerances `tol` that [`bounds`] gives on the normalised
/// rows to the gradient of a normalising batch loss on rows `x` (f64, rows of `d`):
/// updates move with the rounding of the rows ([`normalized_dy`]), then the backward pass
/// divides by the row norm and adds its own rounding, relative to the twin's gradient
/// `grad`. `w` is the terms' weight ([`eval_weight`]).
pub fn through_normalization(
    tol: &mut [f64],
    x: &[f64],
    d: usize,
    evals: &[Eval],
    w: f64,
    p: &BatchParams,
    grad: &[f32],
) {
    let dy = normalized_dy(d);
    for e in evals {
        let c = w * slope64(p.hinge, e.v);
        for &(i, j, dd) in &[e.ap, e.neg] {
            for r in [i, j] {
                tol[r] += 2.0 * c * hess_scale(p.metric, dd) * dy;
            }
        }
    }
    for (r, t) in tol.iter_mut().enumerate() {
        let rn = norm(row(x, d, r)).max(1e-12);
        let g1: f64 = grad[r * d..(r + 1) * d]
            .iter()
            .map(|v| f64::from(v.abs()))
            .sum();
        *t = 4.0 * *t / rn + 8.0 * (d as f64 + 20.0) * EPS * g1 / rn;
    }
}

/// One evaluated triplet: margin value, its rows and distances, and the pair of the
/// negative distance used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Eval {
    pub v: f64,
    pub ap: (usize, usize, f64),
    pub neg: (usize, usize, f64),
    /// Distance between the two swap candidates (for skipping swap ties).
    pub swap_gap: f64,
}

pub fn eval_triplet(x: &[f64], d: usize, t: Idx3, p: &TripletParams) -> Eval {
    let eps = f64::from(p.eps);
    let (a, pp, q) = t;
    let dap = dist(p.metric, row(x, d, a), row(x, d, pp), eps);
    let dan = dist(p.metric, row(x, d, a), row(x, d, q), eps);
    let mut neg = (a, q, dan);
    let mut gap = f64::INFINITY;
    if p.swap {
        let dpn = dist(p.metric, row(x, d, pp), row(x, d, q), eps);
        // With a == p both candidates are the same function: no decision to skip.
        if a != pp {
            gap = (dpn - dan).abs();
        }
        if dpn < dan {
            neg = (pp, q, dpn);
        }
    }
    Eval {
        v: dap - neg.2 + f64::from(p.margin),
        ap: (a, pp, dap),
        neg,
        swap_gap: gap,
    }
}

/// Per-term error bound of the margin value: the distance bounds of the two distances.
pub fn dv_bound(y: &[f64], d: usize, e: &Eval, metric: Metric, eps: f64, margin: f32) -> f64 {
    dv_bound_with(y, d, e, metric, eps, margin, dist_scale)
}

/// A distance's error scale: [`dist_scale`] or [`dist_scale_underflow`].
pub type Scale = fn(Metric, &[f64], &[f64], f64) -> f64;

/// [`dv_bound`] with the distances' error scales from `scale`.
pub fn dv_bound_with(
    y: &[f64],
    d: usize,
    e: &Eval,
    metric: Metric,
    eps: f64,
    margin: f32,
    scale: Scale,
) -> f64 {
    let s = scale(metric, row(y, d, e.ap.0), row(y, d, e.ap.1), eps)
        + scale(metric, row(y, d, e.neg.0), row(y, d, e.neg.1), eps)
        + f64::from(margin).abs();
    4.0 * (d as f64 / 8.0 + 12.0) * EPS * s
}

pub struct Bounds {
    /// Loss tolerance.
    pub loss: f64,
    /// Per-row gradient tolerance.
    pub grad: Vec<f64>,
    /// Some relu margin value lies within its error bound of the kink.
    pub near_kink: bool,
    /// Some swap decision lies within the error bounds of a tie.
    pub near_swap: bool,
    /// A (squared) Euclidean distance between different rows is in `f32`'s underflow
    /// range.
    pub tiny: bool,
    /// A squared Euclidean distance in that range, or a Euclidean one below `2^-100`,
    /// where even the recomputed distance has lost digits to subnormals.
    pub very_tiny: bool,
}

/// What [`bounds`] covers beyond the distance bounds of the margin values.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allow {
    /// Added to each margin value's error bound (the rounding of normalised rows).
    pub dv_extra: f64,
    /// Batch-all: its terms use the mined (Gram) distances, its relu terms are summed in
    /// the backend's `f32` lanes and its gradient is GEMM-shaped (the wider bounds of
    /// `triplet_batch_loss(_grad)`).
    pub all: bool,
    /// Each distance's scale gains the absolute allowance of terms that underflow `f32`
    /// ([`dist_scale_underflow`]): for data of any magnitude.
    pub underflow: bool,
}

/// The documented bounds, with a safety factor, over evaluated triplets on rows `y`,
/// widened as `allow` says.
pub fn bounds(
    y: &[f64],
    n: usize,
    d: usize,
    evals: &[Eval],
    tp: &TripletParams,
    allow: Allow,
) -> Bounds {
    let Allow {
        dv_extra,
        all,
        underflow,
    } = allow;
    let scale: Scale = if underflow {
        dist_scale_underflow
    } else {
        dist_scale
    };
    let eps = f64::from(tp.eps);
    let df = d as f64;
    let w = eval_weight(evals, tp.hinge, tp.reduction);
    let (mut loss, mut terms) = (0.0, 0.0);
    let mut g = vec![0.0; n];
    let mut m = vec![0usize; n];
    let mut extra = vec![0.0; n];
    let (mut near_kink, mut near_swap) = (false, false);
    let (mut tiny, mut very_tiny) = (false, false);
    let tiny_sq = (df + 8.0) * TINY * 1e8;
    for e in evals {
        let mut dv = dv_bound_with(y, d, e, tp.metric, eps, tp.margin, scale) + dv_extra;
        if all {
            dv += 2.0
                * match tp.metric {
                    Metric::Cosine => 2.0 * (2.0 * df + 10.0) * U,
                    _ => (8.0 * df + 16.0) * U * (e.ap.2 + e.neg.2),
                };
        }
        near_kink |= tp.hinge == Hinge::Relu && e.v.abs() <= 2.0 * dv;
        near_swap |= e.swap_gap <= 2.0 * dv;
        for &(i, j, dd) in &[e.ap, e.neg] {
            let sq = match tp.metric {
                Metric::Euclidean => dd * dd,
                _ => dd,
            };
            if tp.metric != Metric::Cosine && i != j && sq < tiny_sq {
                tiny = true;
                very_tiny |= tp.metric == Metric::SquaredEuclidean || sq < 2f64.powi(-200);
            }
        }
        loss += w * (dv + 8.0 * EPS * hinge64(tp.hinge, e.v));
        terms += w * hinge64(tp.hinge, e.v);
        let c = w * slope64(tp.hinge, e.v);
        // Soft margin: the slope moves with the margin value's error (sigmoid' <= 1/4).
        let dc = if tp.hinge == Hinge::SoftPlus {
            w * dv / 4.0
        } else {
            0.0
        };
        for &(i, j, _) in &[e.ap, e.neg] {
            let gs = grad_scale(tp.metric, row(y, d, i), row(y, d, j), eps).max(grad_scale(
                tp.metric,
                row(y, d, j),
                row(y, d, i),
                -eps,
            ));
            for r in [i, j] {
                g[r] += c * gs;
                m[r] += 1;
                extra[r] += dc * gs;
            }
        }
    }
    if all {
        // Relu terms of a pair summed in the backend's f32 lanes.
        loss += 2.0 * (n as f64 / 8.0 + 5.0) * U * terms;
    }
    let gemm = 2.0 * ((2.0 * n as f64 + 4.0) * (8.0 * df).sqrt() + 8.0 * df + 16.0) * U;
    let grad = (0..n)
        .map(|r| {
            let own = 8.0 * (m[r] as f64 + df + 16.0) * EPS * g[r];
            if all {
                own + gemm * g[r] + 2.0 * extra[r] + 1e-30
            } else {
                own + 2.0 * extra[r] + 1e-30
            }
        })
        .collect();
    Bounds {
        loss: loss + 1e-30,
        grad,
        near_kink,
        near_swap,
        tiny,
        very_tiny,
    }
}

/// Batch params as explicit-triplet params (no swap, no eps).
pub fn as_triplet(p: &BatchParams) -> TripletParams {
    TripletParams::new()
        .with_metric(p.metric)
        .with_margin(p.margin)
        .with_hinge(p.hinge)
        .with_reduction(p.reduction)
}

/// The triplets `mine_triplets` (fast or twin) selects.
pub fn mined(x: Matrix<'_>, labels: &[u32], metric: Metric, m: Mining, fast: bool) -> Vec<Triplet> {
    let mut out = vec![Triplet::default(); mine_triplets_count(labels, m).unwrap()];
    let mut ws = vec![0.0; mine_triplets_workspace_len(x.rows(), x.dim())];
    let k = if fast {
        mine_triplets(x, labels, metric, m, &mut out, &mut ws)
    } else {
        scalar::mine_triplets(x, labels, metric, m, &mut out, &mut ws)
    }
    .unwrap();
    assert_eq!(k, out.len());
    out
}
