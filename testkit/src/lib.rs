//! One copy of what the tests and the fuzz targets of `triplet-kernels` compare the
//! kernels against: the `f64` definitions of the losses, the documented error bounds
//! (the tolerance models) and the dispatch between a fast kernel and its scalar twin.
//!
//! - [`rows`]: distances between `f32` rows in `f64`, and the scales their bounds are
//!   relative to.
//! - [`bounds`]: the bounds of the distance matrices and of the proxy losses.
//! - [`triplet_def`]: the `f64` definition of the triplet losses and their bounds.
//! - [`contrastive`], [`quadruplet`]: the bounds of those losses.
//! - [`miners`]: the threshold miners' rules and the bounds of the losses over pairs.
//! - [`proxy`]: the proxy losses, fast or twin, behind one enum.
//! - [`runs`]: the triplet losses, fast or twin, checked against their forward-only calls.
//! - `strategies` (feature `proptest`): the property tests' value and batch strategies.
//!
//! Not published: a development dependency of the library's tests and a dependency of
//! the fuzz crate, which builds without proptest.

pub mod bounds;
pub mod contrastive;
pub mod miners;
pub mod proxy;
pub mod quadruplet;
pub mod rows;
pub mod runs;
#[cfg(feature = "proptest")]
pub mod strategies;
pub mod triplet_def;

use triplet_kernels::Metric;

pub const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];
/// Machine epsilon of `f32`.
pub const EPS: f64 = f32::EPSILON as f64;
/// Unit roundoff of `f32`.
pub const U: f64 = EPS / 2.0;
/// Smallest normal `f32`: the absolute error scale of an underflowing term.
pub const TINY: f64 = f32::MIN_POSITIVE as f64;

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// `|got - want| <= tol(k)` element-wise, with a message.
#[track_caller]
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
