//! Differential target: fast distance kernels against their scalar twins on bounded,
//! structured inputs (any f32 bit pattern, NaN, inf, subnormals and 1e30 magnitudes
//! included). Finite inputs must agree within the documented bound (Euclidean: rows whose
//! squared norm stays below `f32::MAX / 4`; cosine: every finite row); non-finite inputs
//! must give non-finite entries in exactly the affected rows and columns. The pairwise
//! diagonal is the formula's value: exactly 0 for the Euclidean metrics and for cosine
//! rows of norm `>= 1e-12`, `1 - |x|^2 / 1e-24` below, as the twin gives it. Row norms
//! and unit rows of every finite row are finite and within the documented bound.

#![no_main]

mod common;

use arbitrary::Arbitrary;
use common::{norm, sq_norm, EPS};
use libfuzzer_sys::fuzz_target;
use testkit::bounds::distance_tolerance;
use triplet_kernels::{
    cross_distances, cross_distances_workspace_len, l2_normalize, pairwise_distances,
    pairwise_distances_workspace_len, row_norms, scalar, DistanceMode, Matrix, Metric, NORM_EPS,
};

#[derive(Arbitrary, Debug)]
struct Input {
    rows: u8,
    rows_y: u8,
    dim: u8,
    metric: u8,
    values: Vec<f32>,
}

fn metric(m: u8) -> Metric {
    match m % 3 {
        0 => Metric::SquaredEuclidean,
        1 => Metric::Euclidean,
        _ => Metric::Cosine,
    }
}

/// Compares a fast matrix with the twin's; `pairwise`: `y` is `x` and the matrix is a
/// pairwise one (its diagonal has its own rule for non-finite rows).
fn compare(
    x: Matrix<'_>,
    y: Matrix<'_>,
    metric: Metric,
    fast: &[f32],
    slow: &[f32],
    pairwise: bool,
) {
    let n = y.rows();
    for (i, a) in x.row_iter().enumerate() {
        for (j, b) in y.row_iter().enumerate() {
            let (f, s) = (fast[i * n + j], slow[i * n + j]);
            // Documented range: squared norms below f32::MAX / 4 for the Euclidean metrics
            // (beyond it f32 sums overflow); cosine rescales huge rows, any finite row.
            let finite_rows = a.iter().chain(b).all(|v| v.is_finite());
            let in_range = match metric {
                Metric::Cosine => finite_rows,
                _ => {
                    sq_norm(a) < f64::from(f32::MAX) / 4.0 && sq_norm(b) < f64::from(f32::MAX) / 4.0
                }
            };
            if metric == Metric::Cosine && finite_rows {
                assert!(f.is_finite(), "cosine ({i},{j}) of finite rows gave {f}");
            }
            if f.is_finite() && s.is_finite() && in_range {
                // Squares may overflow in f32 but not in f64 and come back finite: compare
                // only where the exact value is representable.
                // The documented bound of the matrix kernels' Gram form (module docs of `distance`),
                // the tests' model.
                let tol = distance_tolerance(metric, DistanceMode::Gram, a, b);
                if tol.is_finite() && tol < 1e37 {
                    assert!(
                        (f64::from(f) - f64::from(s)).abs() <= tol,
                        "{metric:?} ({i},{j}) {f} vs {s}"
                    );
                }
            } else if !finite_rows {
                // The pairwise diagonal of a non-finite row: the twin's value.
                if pairwise && i == j {
                    assert!(
                        f.to_bits() == s.to_bits() || (f.is_nan() && s.is_nan()),
                        "({i},{i}) diagonal {f} vs {s}"
                    );
                } else {
                    assert!(!f.is_finite(), "({i},{j}) non-finite input gave {f}");
                }
            }
        }
    }
}

fuzz_target!(|input: Input| {
    // Mostly short rows; from 240 on, rows of 256-301 elements (the AVX-512 backend's
    // long-row tile shape).
    let dim = match input.dim {
        240.. => 256 + usize::from(input.dim - 240) * 3,
        _ => usize::from(input.dim % 70) + 1,
    };
    let m = usize::from(input.rows % 40) + 1;
    let n = usize::from(input.rows_y % 40) + 1;
    let mut values = input.values;
    if values.is_empty() {
        return;
    }
    while values.len() < (m + n) * dim {
        let extra = values.clone();
        values.extend(extra);
    }
    let (xd, rest) = values.split_at(m * dim);
    let yd = &rest[..n * dim];
    let x = Matrix::new(xd, m, dim).unwrap();
    let y = Matrix::new(yd, n, dim).unwrap();
    let metric = metric(input.metric);

    let mut fast = vec![f32::NAN; m * m];
    let mut slow = vec![f32::NAN; m * m];
    let mut ws = vec![f32::NAN; pairwise_distances_workspace_len(m, dim)];
    pairwise_distances(x, metric, &mut fast, &mut ws).unwrap();
    scalar::pairwise_distances(x, metric, &mut slow, &mut ws).unwrap();
    for (i, row) in x.row_iter().enumerate() {
        // The formula's diagonal: exactly 0 except for cosine rows below the clamp (and
        // NaN rows, whose cosine diagonal `compare` holds to the twin's).
        if metric != Metric::Cosine || norm(row) >= f64::from(NORM_EPS) {
            assert_eq!(fast[i * m + i], 0.0, "diagonal ({i},{i})");
            assert_eq!(slow[i * m + i], 0.0, "twin diagonal ({i},{i})");
        }
        for j in 0..m {
            assert_eq!(fast[i * m + j].to_bits(), fast[j * m + i].to_bits());
        }
    }
    compare(x, x, metric, &fast, &slow, true);

    let mut fast = vec![f32::NAN; m * n];
    let mut slow = vec![f32::NAN; m * n];
    let mut ws = vec![f32::NAN; cross_distances_workspace_len(m, n, dim)];
    cross_distances(x, y, metric, &mut fast, &mut ws).unwrap();
    scalar::cross_distances(x, y, metric, &mut slow, &mut ws).unwrap();
    compare(x, y, metric, &fast, &slow, false);

    // Norms and unit rows: overflow-safe, so every finite row is within the documented
    // bound (the tests' factor of 4), finite unless the exact norm exceeds f32::MAX.
    let mut norms = vec![f32::NAN; m];
    let mut slow = vec![f32::NAN; m];
    row_norms(x, &mut norms).unwrap();
    scalar::row_norms(x, &mut slow).unwrap();
    let mut unit = vec![f32::NAN; m * dim];
    let mut unit_slow = vec![f32::NAN; m * dim];
    l2_normalize(x, &mut unit).unwrap();
    scalar::l2_normalize(x, &mut unit_slow).unwrap();
    let d = dim as f64;
    for (i, row) in x.row_iter().enumerate() {
        if !row.iter().all(|v| v.is_finite()) {
            continue;
        }
        let (r, s) = (norms[i], slow[i]);
        assert!(r >= 0.0, "row_norms[{i}] = {r}");
        let exact = norm(row);
        if exact <= f64::from(f32::MAX) / 2.0 {
            // Plus one subnormal step: a norm below f32's normal range cannot be relative.
            let tol = 4.0 * (d / 8.0 + 10.0) * EPS / 2.0 * exact + f64::from(f32::from_bits(1));
            assert!(
                (f64::from(r) - exact).abs() <= tol,
                "row_norms[{i}] = {r}, exact {exact}, twin {s}, tol {tol}"
            );
        }
        let (u, us) = (
            &unit[i * dim..(i + 1) * dim],
            &unit_slow[i * dim..(i + 1) * dim],
        );
        for (k, (&v, &w)) in u.iter().zip(us).enumerate() {
            let tol = 4.0 * (d / 8.0 + 12.0) * EPS / 2.0;
            assert!(
                v.is_finite() && (f64::from(v) - f64::from(w)).abs() <= tol,
                "l2_normalize[{i}][{k}] = {v}, twin {w}, tol {tol}"
            );
        }
    }
});
