//! Differential target: fast distance kernels against their scalar twins on bounded,
//! structured inputs (any f32 bit pattern, NaN, inf, subnormals and 1e30 magnitudes
//! included). Finite inputs must agree within the documented bound; non-finite inputs
//! must give non-finite entries in exactly the affected rows and columns.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use triplet_kernels::{
    cross_distances, cross_distances_workspace_len, l2_normalize, pairwise_distances,
    pairwise_distances_workspace_len, row_norms, scalar, Matrix, Metric,
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

/// The documented bound of the matrix kernels' Gram form (module docs of `distance`):
/// relative to `|a|^2 + |b|^2`, not to the distance, plus an absolute allowance for terms
/// that underflow; cosine's is absolute. Mirrors `tests/distance.rs`.
fn bound(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let u = f64::from(f32::EPSILON) / 2.0;
    let d = a.len() as f64;
    let growth = 1.0 / (1.0 - (d + 2.0) * u);
    let sq64 = |r: &[f32]| r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
    let exact_sq: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    let sq_bound = (2.0 * d + 4.0) * u * (sq64(a) + sq64(b)) * growth + (2.0 * d + 8.0) * 1.2e-38;
    match metric {
        Metric::SquaredEuclidean => sq_bound + u * exact_sq,
        Metric::Euclidean => {
            let e = exact_sq.sqrt();
            let through_sqrt = if e > 0.0 {
                sq_bound.sqrt().min(sq_bound / e)
            } else {
                sq_bound.sqrt()
            };
            through_sqrt + 2.0 * u * (e + sq_bound.sqrt())
        }
        Metric::Cosine => (2.0 * d + 10.0) * u * growth + 2.0 * u,
    }
}

fn compare(x: Matrix<'_>, y: Matrix<'_>, metric: Metric, fast: &[f32], slow: &[f32]) {
    let n = y.rows();
    for (i, a) in x.row_iter().enumerate() {
        for (j, b) in y.row_iter().enumerate() {
            let (f, s) = (fast[i * n + j], slow[i * n + j]);
            let sq_norm = |r: &[f32]| r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
            // Documented range: squared norms below f32::MAX (beyond it f32 sums overflow).
            let in_range =
                sq_norm(a) < f64::from(f32::MAX) / 4.0 && sq_norm(b) < f64::from(f32::MAX) / 4.0;
            if f.is_finite() && s.is_finite() && in_range {
                // Squares may overflow in f32 but not in f64 and come back finite: compare
                // only where the exact value is representable.
                let tol = bound(metric, a, b);
                if tol.is_finite() && tol < 1e37 {
                    assert!(
                        (f64::from(f) - f64::from(s)).abs() <= tol,
                        "{metric:?} ({i},{j}) {f} vs {s}"
                    );
                }
            } else {
                let finite_rows = a.iter().chain(b).all(|v| v.is_finite());
                if !finite_rows {
                    assert!(
                        !f.is_finite() || i == j,
                        "({i},{j}) non-finite input gave {f}"
                    );
                }
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let dim = usize::from(input.dim % 70) + 1;
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
    for i in 0..m {
        assert_eq!(fast[i * m + i], 0.0);
        for j in 0..m {
            assert_eq!(fast[i * m + j].to_bits(), fast[j * m + i].to_bits());
        }
    }
    compare(x, x, metric, &fast, &slow);

    let mut fast = vec![f32::NAN; m * n];
    let mut slow = vec![f32::NAN; m * n];
    let mut ws = vec![f32::NAN; cross_distances_workspace_len(m, n, dim)];
    cross_distances(x, y, metric, &mut fast, &mut ws).unwrap();
    scalar::cross_distances(x, y, metric, &mut slow, &mut ws).unwrap();
    compare(x, y, metric, &fast, &slow);

    let mut norms = vec![f32::NAN; m];
    row_norms(x, &mut norms).unwrap();
    let mut unit = vec![f32::NAN; m * dim];
    l2_normalize(x, &mut unit).unwrap();
    for (row, &r) in x.row_iter().zip(&norms) {
        if row.iter().all(|v| v.is_finite()) {
            assert!(r >= 0.0 && !r.is_nan());
        }
    }
});
