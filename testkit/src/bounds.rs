//! Documented error bounds of the distance matrices and of the proxy losses.

use crate::rows::{norm, sq_dist, sq_norm};
use crate::{assert_close, EPS, TINY, U};
use triplet_kernels::{DistanceMode, Matrix, Metric, ProxyAnchorParams, ProxyNcaParams};

/// The documented bound (module docs of `distance`, "Numerics") on `|fast - exact|` for
/// one entry, plus the twin's rounding (`u |exact|`), for `metric` in `mode` between rows
/// `a` and `b`.
pub fn distance_tolerance(metric: Metric, mode: DistanceMode, a: &[f32], b: &[f32]) -> f64 {
    let d = a.len() as f64;
    let growth = 1.0 / (1.0 - (d + 2.0) * U);
    let exact_sq = sq_dist(a, b);
    // |a|^2 + |b|^2 bounds the Gram form's error; underflowing terms add an absolute part.
    let sq_bound = match mode {
        DistanceMode::Gram => (2.0 * d + 4.0) * U * (sq_norm(a) + sq_norm(b)) * growth,
        DistanceMode::Direct => (d + 2.0) * U * exact_sq * growth,
        _ => unreachable!("a variant this test does not know"),
    } + (2.0 * d + 8.0) * TINY;
    match metric {
        Metric::SquaredEuclidean => sq_bound + U * exact_sq,
        // The squared distance's error through the square root, plus two roundings.
        Metric::Euclidean => {
            let e = exact_sq.sqrt();
            let through_sqrt = if e > 0.0 {
                sq_bound.sqrt().min(sq_bound / e)
            } else {
                sq_bound.sqrt()
            };
            through_sqrt + 2.0 * U * (e + sq_bound.sqrt())
        }
        Metric::Cosine => (2.0 * d + 10.0) * U * growth + 2.0 * U,
        _ => unreachable!("a variant this test does not know"),
    }
}

/// Proxy-NCA's `(loss tolerance, per-row factor, per-proxy factor)`: the gradient
/// tolerance of a row is its factor divided by the row's clamped norm.
pub fn proxy_nca_tolerances(q: ProxyNcaParams, n: usize, c: usize, d: usize) -> (f64, f64, f64) {
    // Accumulation lengths, plus the amplification of each similarity's or distance's
    // own error ((d / 8 + 12) 2^-24) by the scale in the exponent.
    let base = (n + c + d + 24) as f64;
    let dist_err = d as f64 / 8.0 + 12.0;
    let s = f64::from(q.softmax_scale);
    let k = 4.0 * EPS * (base + 4.0 * s * dist_err);
    // sum_c |w_ic| <= 2 s / n and sum_i |w_ic| <= 2 s, times |x^ - P^| <= 2, times 2 for
    // the two terms of each product and 2 for safety.
    (
        k * (4.0 * s + (c as f64).ln() + 1.0),
        k * 16.0 * s / n as f64,
        k * 16.0 * s,
    )
}

/// Proxy-Anchor's `(loss tolerance, per-row factor, per-proxy factor)`, as
/// [`proxy_nca_tolerances`].
pub fn proxy_anchor_tolerances(
    q: ProxyAnchorParams,
    n: usize,
    c: usize,
    d: usize,
) -> (f64, f64, f64) {
    let base = (n + c + d + 24) as f64;
    let dist_err = d as f64 / 8.0 + 12.0;
    let a = f64::from(q.alpha);
    let m = f64::from(q.margin.abs());
    let k = 4.0 * EPS * (base + a * (1.0 + m + dist_err));
    // sum_c |G_ic| and sum_i |G_ic| are at most 2 alpha; 2 for safety.
    (
        k * 2.0 * (a * (1.0 + m) + (n as f64 + 1.0).ln() + 1.0),
        k * 4.0 * a,
        k * 4.0 * a,
    )
}

/// One proxy loss's fast result `(loss, grad, grad_proxies)` against its twin's, within
/// the tolerances `(loss, per-row factor, per-proxy factor)` of
/// [`proxy_nca_tolerances`] / [`proxy_anchor_tolerances`]: finite everywhere, the loss
/// within its tolerance, each gradient row within its factor over the row's clamped norm.
pub fn assert_proxy_close(
    what: &str,
    (x, p): (Matrix<'_>, Matrix<'_>),
    (lf, gf, gpf): (f32, &[f32], &[f32]),
    (ls, gs, gps): (f32, &[f32], &[f32]),
    (lt, rt, pt): (f64, f64, f64),
) {
    let d = x.dim();
    assert!(
        lf.is_finite() && gf.iter().chain(gpf).all(|v| v.is_finite()),
        "{what}: non-finite"
    );
    assert!(
        (f64::from(lf) - f64::from(ls)).abs() <= lt,
        "{what}: loss {lf} vs {ls}, tol {lt:e}"
    );
    let rn: Vec<f64> = x.row_iter().map(|r| norm(r).max(1e-12)).collect();
    let pn: Vec<f64> = p.row_iter().map(|r| norm(r).max(1e-12)).collect();
    assert_close(&format!("{what} grad"), gf, gs, |k| rt / rn[k / d] + 1e-30);
    assert_close(&format!("{what} grad_proxies"), gpf, gps, |k| {
        pt / pn[k / d] + 1e-30
    });
}

/// ArcFace's and CosFace's `(loss tolerance, per-row factor, per-weight factor)`, as
/// [`proxy_nca_tolerances`]: each cosine comes from a sequential `f32` sum of `d` products
/// of normalised rows (error about `(d + 12) 2^-24`), amplified in the logits by the scale
/// `s` and, for the ArcFace target, by `f'(c) <= slope`.
pub fn face_tolerances(scale: f32, slope: f64, n: usize, c: usize, d: usize) -> (f64, f64, f64) {
    let base = (n + c + d + 24) as f64;
    let s = f64::from(scale);
    let k = 4.0 * EPS * (base + 4.0 * s * slope * (d as f64 + 12.0));
    (
        k * (2.0 * s * slope + (c as f64).ln() + 1.0),
        k * 16.0 * s * slope / n as f64,
        k * 16.0 * s * slope,
    )
}

/// The largest `|cos|` of a row of `x` with its target class's row of `w` (rows of `d`),
/// which sets ArcFace's slope `f'(c) <= 1 + 1 / sqrt(1 - c^2)` in [`face_tolerances`].
pub fn max_target_cos(x: &[f32], w: &[f32], labels: &[u32], d: usize) -> f64 {
    let norm = |v: &[f32]| {
        v.iter()
            .map(|&a| f64::from(a).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12)
    };
    x.chunks_exact(d)
        .zip(labels)
        .map(|(xi, &t)| {
            let wt = &w[t as usize * d..(t as usize + 1) * d];
            let dot: f64 = xi
                .iter()
                .zip(wt)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            (dot / (norm(xi) * norm(wt))).abs()
        })
        .fold(0.0, f64::max)
}
