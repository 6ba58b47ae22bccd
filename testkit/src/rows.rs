//! Distances between `f32` rows in `f64`, and the scales their documented bounds are
//! relative to.

use crate::TINY;
use triplet_kernels::Metric;

/// The elements of `v` as `f64`.
pub fn f64s(v: &[f32]) -> impl Iterator<Item = f64> + '_ {
    v.iter().map(|&x| f64::from(x))
}

pub fn sq_norm(a: &[f32]) -> f64 {
    f64s(a).map(|v| v * v).sum()
}

pub fn norm(a: &[f32]) -> f64 {
    sq_norm(a).sqrt()
}

pub fn inf_norm(a: &[f32]) -> f64 {
    f64s(a).fold(0.0, |m, v| m.max(v.abs()))
}

pub fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    f64s(a).zip(f64s(b)).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// The distance in f64 (the definition, for scales and kink checks).
pub fn dist64(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let sq = sq_dist(a, b);
    match metric {
        Metric::SquaredEuclidean => sq,
        Metric::Euclidean => sq.sqrt(),
        Metric::Cosine => {
            let dot: f64 = f64s(a).zip(f64s(b)).map(|(x, y)| x * y).sum();
            1.0 - dot / (norm(a).max(1e-12) * norm(b).max(1e-12))
        }
        _ => unreachable!("a variant this test does not know"),
    }
}

/// Sum of the absolute terms behind one distance: its error is at most
/// `(d / 8 + 12) * 2^-24` times this (see the distance module).
pub fn dist_scale(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    match metric {
        Metric::Cosine => {
            1.0 + f64s(a)
                .zip(f64s(b))
                .map(|(x, y)| (x * y).abs())
                .sum::<f64>()
                / (norm(a).max(1e-12) * norm(b).max(1e-12))
        }
        m => dist64(m, a, b),
    }
}

/// Absolute error allowance of one distance of rows of `dim` from terms below `f32`'s
/// normal range.
pub fn underflow_allowance(metric: Metric, dim: usize) -> f64 {
    let t = (dim as f64 + 8.0) * TINY;
    match metric {
        Metric::SquaredEuclidean => t,
        Metric::Euclidean => t.sqrt(),
        Metric::Cosine => 0.0,
        _ => unreachable!("a variant this test does not know"),
    }
}

/// Bound on the elements of the terms the kernels add for `d d(a, b) / d a` (separately
/// for `a` and `b`, so that their rounding is covered even when `a - b` cancels).
pub fn grad_scale(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let (ia, ib) = (inf_norm(a), inf_norm(b));
    match metric {
        Metric::SquaredEuclidean => 2.0 * (ia + ib),
        Metric::Euclidean => {
            let d = dist64(metric, a, b);
            if d > 0.0 {
                (ia + ib) / d
            } else {
                0.0
            }
        }
        Metric::Cosine => {
            let (na, nb) = (norm(a).max(1e-12), norm(b).max(1e-12));
            let d = dist64(metric, a, b);
            ib / (na * nb) + ((1.0 - d).abs() + dist_scale(metric, a, b)) * ia / (na * na)
        }
        _ => unreachable!("a variant this test does not know"),
    }
}
