//! Helpers shared by the test binaries: proptest strategies, the `f64` definitions the
//! tolerances are computed from, and the documented error bounds of the kernels.
//!
//! Each binary includes this module with `mod common;` and uses what it needs.
#![allow(dead_code)]

pub mod bounds;
pub mod rows;
pub mod strategies;
pub mod triplet_def;

use triplet_kernels::Metric;

pub const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];
/// Machine epsilon of `f32`.
pub const EPS: f64 = f32::EPSILON as f64;
/// Unit roundoff of `f32`.
pub const U: f64 = EPS / 2.0;
/// Smallest normal `f32`: the absolute error scale of an underflowing term.
pub const TINY: f64 = 1.2e-38;

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// `|got - want| <= tol(k)` element-wise, with a message.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let t = tol(k);
        assert!(
            (f64::from(g) - f64::from(w)).abs() <= t,
            "{what}[{k}]: fast {g}, scalar {w}, tol {t:e}"
        );
    }
}
