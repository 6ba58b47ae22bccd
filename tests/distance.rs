//! Fast distance kernels against their scalar twins, plus every error path.

use proptest::prelude::*;
use triplet_kernels::{
    cross_distances, cross_distances_workspace_len, l2_normalize, l2_normalize_backward,
    pairwise_distances, pairwise_distances_workspace_len, row_norms, scalar, DistanceMode, Error,
    Matrix, Metric,
};

const EPS: f64 = f32::EPSILON as f64;

use testkit::bounds::distance_tolerance;
use testkit::strategies::{int_value, matrix, value};
use testkit::METRICS;

fn check_cross(x: &Matrix<'_>, y: &Matrix<'_>, metric: Metric, fast: &[f32], slow: &[f32]) {
    let n = y.rows();
    for (i, a) in x.row_iter().enumerate() {
        for (j, b) in y.row_iter().enumerate() {
            let (f, s) = (fast[i * n + j], slow[i * n + j]);
            let tol = distance_tolerance(metric, DistanceMode::Gram, a, b);
            assert!(
                (f64::from(f) - f64::from(s)).abs() <= tol,
                "{metric:?} ({i},{j}): fast {f} scalar {s} tol {tol}"
            );
        }
    }
}

fn run_pairwise(x: Matrix<'_>, metric: Metric, exact: bool) {
    let n = x.rows();
    let mut fast = vec![f32::NAN; n * n];
    let mut slow = vec![f32::NAN; n * n];
    let mut ws = vec![f32::NAN; pairwise_distances_workspace_len(n, x.dim())];
    pairwise_distances(x, metric, &mut fast, &mut ws).unwrap();
    // A second call with a workspace full of other garbage gives the same bits.
    let mut again = vec![-7.0; n * n];
    ws.fill(f32::INFINITY);
    pairwise_distances(x, metric, &mut again, &mut ws).unwrap();
    assert_eq!(
        fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        again.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    scalar::pairwise_distances(x, metric, &mut slow, &mut ws).unwrap();
    for i in 0..n {
        // The formula's value: exactly 0, or (cosine, zero row) exactly 1, as the twin.
        let zero_cosine_row =
            metric == Metric::Cosine && x.row(i).unwrap().iter().all(|&v| v == 0.0);
        let diagonal = if zero_cosine_row { 1.0 } else { 0.0 };
        assert_eq!(fast[i * n + i], diagonal, "diagonal");
        assert_eq!(slow[i * n + i], diagonal, "twin's diagonal");
        for j in 0..n {
            assert_eq!(
                fast[i * n + j].to_bits(),
                fast[j * n + i].to_bits(),
                "symmetry"
            );
        }
    }
    if exact && metric == Metric::SquaredEuclidean {
        assert_eq!(fast, slow);
    } else {
        check_cross(&x, &x, metric, &fast, &slow);
    }
}

fn run_cross(x: Matrix<'_>, y: Matrix<'_>, metric: Metric, exact: bool) {
    let (m, n) = (x.rows(), y.rows());
    let mut fast = vec![f32::NAN; m * n];
    let mut slow = vec![f32::NAN; m * n];
    let mut ws = vec![f32::NAN; cross_distances_workspace_len(m, n, x.dim())];
    cross_distances(x, y, metric, &mut fast, &mut ws).unwrap();
    ws.fill(f32::NAN);
    scalar::cross_distances(x, y, metric, &mut slow, &mut ws).unwrap();
    if exact && metric == Metric::SquaredEuclidean {
        assert_eq!(fast, slow);
    } else {
        check_cross(&x, &y, metric, &fast, &slow);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn pairwise_matches_scalar((n, d, data) in matrix(1usize..=33, 1usize..=67, value())) {
        let x = Matrix::new(&data, n, d).unwrap();
        for metric in METRICS {
            run_pairwise(x, metric, false);
        }
    }

    #[test]
    fn pairwise_integers_exact((n, d, data) in matrix(1usize..=33, 1usize..=67, int_value())) {
        let x = Matrix::new(&data, n, d).unwrap();
        for metric in METRICS {
            run_pairwise(x, metric, true);
        }
    }

    #[test]
    fn cross_matches_scalar(
        (m, d, xd) in matrix(1usize..=33, 1usize..=67, value()),
        n in 1usize..=33,
        seed in proptest::collection::vec(value(), 33 * 67),
    ) {
        let x = Matrix::new(&xd, m, d).unwrap();
        let yd = &seed[..n * d];
        let y = Matrix::new(yd, n, d).unwrap();
        for metric in METRICS {
            run_cross(x, y, metric, false);
        }
    }

    #[test]
    fn cross_integers_exact(
        (m, d, xd) in matrix(1usize..=33, 1usize..=67, int_value()),
        n in 1usize..=33,
        seed in proptest::collection::vec(int_value(), 33 * 67),
    ) {
        let x = Matrix::new(&xd, m, d).unwrap();
        let y = Matrix::new(&seed[..n * d], n, d).unwrap();
        for metric in METRICS {
            run_cross(x, y, metric, true);
        }
    }

    #[test]
    fn norms_and_normalisation_match_scalar((n, d, data) in matrix(1usize..=33, 1usize..=67, value())) {
        let x = Matrix::new(&data, n, d).unwrap();
        let (mut f, mut s) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        row_norms(x, &mut f).unwrap();
        scalar::row_norms(x, &mut s).unwrap();
        for (a, b) in f.iter().zip(&s) {
            prop_assert!((f64::from(*a) - f64::from(*b)).abs() <= 4.0 * (d as f64 + 8.0) * EPS * f64::from(*b));
        }
        let (mut f, mut s) = (vec![f32::NAN; n * d], vec![f32::NAN; n * d]);
        l2_normalize(x, &mut f).unwrap();
        scalar::l2_normalize(x, &mut s).unwrap();
        for (a, b) in f.iter().zip(&s) {
            prop_assert!((a - b).abs() <= 4.0 * (d as f32 + 12.0) * f32::EPSILON);
        }
        // Backward against the twin, and against finite differences of the twin's forward.
        let g: Vec<f32> = (0..n * d).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
        let (mut f, mut s) = (vec![f32::NAN; n * d], vec![f32::NAN; n * d]);
        l2_normalize_backward(x, &g, &mut f).unwrap();
        scalar::l2_normalize_backward(x, &g, &mut s).unwrap();
        for (i, row) in x.row_iter().enumerate() {
            let r = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
            let gn = g[i * d..(i + 1) * d].iter().map(|&v| f64::from(v).abs()).sum::<f64>();
            let tol = 8.0 * (d as f64 + 20.0) * EPS * gn / r;
            for k in i * d..(i + 1) * d {
                prop_assert!((f64::from(f[k]) - f64::from(s[k])).abs() <= tol, "{} vs {}", f[k], s[k]);
            }
        }
    }
}

#[test]
fn one_large_case() {
    let (n, m, d) = (130, 97, 515);
    let mut state = 0x2545_f491_u32;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32) * 4.0 - 2.0
    };
    let xd: Vec<f32> = (0..n * d).map(|_| next()).collect();
    let yd: Vec<f32> = (0..m * d).map(|_| next()).collect();
    let x = Matrix::new(&xd, n, d).unwrap();
    let y = Matrix::new(&yd, m, d).unwrap();
    for metric in METRICS {
        run_pairwise(x, metric, false);
        run_cross(x, y, metric, false);
    }
}

#[test]
fn zero_rows_and_cosine() {
    let data = [0.0, 0.0, 3.0, 4.0, 0.0, 0.0];
    let x = Matrix::new(&data, 3, 2).unwrap();
    let mut out = [f32::NAN; 9];
    let mut ws = [f32::NAN; pairwise_distances_workspace_len(3, 2)];
    pairwise_distances(x, Metric::Cosine, &mut out, &mut ws).unwrap();
    // A zero vector is at distance 1 from every row, itself included (the formula with the
    // clamped norm, as PyTorch's 1 - cosine_similarity(0, 0)); other diagonal entries are
    // exactly 0.
    assert_eq!(out, [1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
    let mut n = [f32::NAN; 6];
    l2_normalize(x, &mut n).unwrap();
    assert_eq!(n, [0.0, 0.0, 0.6, 0.8, 0.0, 0.0]);
    let mut g = [f32::NAN; 6];
    l2_normalize_backward(x, &[1e-12, 0.0, 0.0, 0.0, 0.0, 0.0], &mut g).unwrap();
    assert_eq!(g[..2], [1.0, 0.0]);
    assert!(g.iter().all(|v| v.is_finite()));
}

#[test]
fn non_finite_data_propagates_only_to_affected_entries() {
    let data = [1.0, f32::NAN, 0.0, 1.0, 2.0, 2.0];
    let x = Matrix::new(&data, 3, 2).unwrap();
    for metric in METRICS {
        let mut out = [0.0; 9];
        let mut ws = [0.0; pairwise_distances_workspace_len(3, 2)];
        pairwise_distances(x, metric, &mut out, &mut ws).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let v = out[i * 3 + j];
                if i != j && (i == 0 || j == 0) {
                    assert!(v.is_nan(), "{metric:?} {i} {j}");
                } else {
                    assert!(v.is_finite(), "{metric:?} {i} {j}");
                }
            }
        }
    }
    // Squares that overflow f32 give infinity, not a panic or garbage.
    let big = [1e30_f32, 0.0, -1e30, 0.0];
    let x = Matrix::new(&big, 2, 2).unwrap();
    let mut out = [0.0; 4];
    let mut ws = [0.0; pairwise_distances_workspace_len(2, 2)];
    pairwise_distances(x, Metric::SquaredEuclidean, &mut out, &mut ws).unwrap();
    assert_eq!(out[1], f32::INFINITY);
}

#[test]
fn every_error_path() {
    let data = [1.0_f32; 6];
    assert_eq!(
        Matrix::new(&data, usize::MAX, 2),
        Err(Error::ShapeOverflow {
            rows: usize::MAX,
            cols: 2
        })
    );
    assert_eq!(
        Matrix::new(&[], 0, 3),
        Err(Error::EmptyMatrix { rows: 0, cols: 3 })
    );
    assert_eq!(
        Matrix::new(&[], 3, 0),
        Err(Error::EmptyMatrix { rows: 3, cols: 0 })
    );
    assert_eq!(
        Matrix::new(&data, 2, 2),
        Err(Error::LengthMismatch {
            buffer: "data",
            expected: 4,
            actual: 6
        })
    );
    let x = Matrix::new(&data, 3, 2).unwrap();
    let y = Matrix::new(&data, 2, 3).unwrap();
    let mut out = [7.0_f32; 9];
    let need_pw = pairwise_distances_workspace_len(3, 2);
    let need_cr = cross_distances_workspace_len(3, 3, 2);
    let mut ws = vec![0.0_f32; need_pw.max(need_cr)];
    type Pair = fn(Matrix<'_>, Metric, &mut [f32], &mut [f32]) -> Result<(), Error>;
    type Cross = fn(Matrix<'_>, Matrix<'_>, Metric, &mut [f32], &mut [f32]) -> Result<(), Error>;
    for (pw, cr) in [
        (pairwise_distances as Pair, cross_distances as Cross),
        (scalar::pairwise_distances, scalar::cross_distances),
    ] {
        assert_eq!(
            pw(x, Metric::Euclidean, &mut out[..8], &mut ws),
            Err(Error::LengthMismatch {
                buffer: "out",
                expected: 9,
                actual: 8
            })
        );
        assert_eq!(
            pw(x, Metric::Euclidean, &mut out, &mut ws[..need_pw - 1]),
            Err(Error::WorkspaceTooSmall {
                required: need_pw,
                actual: need_pw - 1
            })
        );
        assert_eq!(
            cr(x, y, Metric::Cosine, &mut out, &mut ws),
            Err(Error::DimensionMismatch { left: 2, right: 3 })
        );
        assert_eq!(
            cr(x, x, Metric::Cosine, &mut out, &mut ws[..need_cr - 1]),
            Err(Error::WorkspaceTooSmall {
                required: need_cr,
                actual: need_cr - 1
            })
        );
        assert_eq!(
            cr(x, x, Metric::Cosine, &mut out[..3], &mut ws),
            Err(Error::LengthMismatch {
                buffer: "out",
                expected: 9,
                actual: 3
            })
        );
    }
    // Nothing was written by any failing call.
    assert!(out.iter().all(|&v| v == 7.0));
    let mut o = [0.0_f32; 3];
    for rn in [
        row_norms as fn(Matrix<'_>, &mut [f32]) -> Result<(), Error>,
        scalar::row_norms,
    ] {
        assert_eq!(
            rn(x, &mut o[..2]),
            Err(Error::LengthMismatch {
                buffer: "out",
                expected: 3,
                actual: 2
            })
        );
    }
    let mut g = [0.0_f32; 6];
    assert_eq!(
        l2_normalize(x, &mut g[..5]),
        Err(Error::LengthMismatch {
            buffer: "out",
            expected: 6,
            actual: 5
        })
    );
    assert_eq!(
        scalar::l2_normalize(x, &mut g[..5]),
        Err(Error::LengthMismatch {
            buffer: "out",
            expected: 6,
            actual: 5
        })
    );
    for bw in [
        l2_normalize_backward as fn(Matrix<'_>, &[f32], &mut [f32]) -> Result<(), Error>,
        scalar::l2_normalize_backward,
    ] {
        assert_eq!(
            bw(x, &data[..5], &mut g),
            Err(Error::LengthMismatch {
                buffer: "grad_out",
                expected: 6,
                actual: 5
            })
        );
        assert_eq!(
            bw(x, &data, &mut g[..4]),
            Err(Error::LengthMismatch {
                buffer: "grad_x",
                expected: 6,
                actual: 4
            })
        );
    }
}

#[test]
fn error_display_is_informative() {
    let all = [
        Error::ShapeOverflow { rows: 1, cols: 2 },
        Error::EmptyMatrix { rows: 0, cols: 2 },
        Error::LengthMismatch {
            buffer: "out",
            expected: 4,
            actual: 3,
        },
        Error::WorkspaceTooSmall {
            required: 4,
            actual: 3,
        },
        Error::DimensionMismatch { left: 2, right: 3 },
        Error::IndexOutOfRange {
            buffer: "triplets",
            position: 1,
            index: 9,
            bound: 4,
        },
        Error::InvalidParameter {
            name: "margin",
            expected: "finite",
        },
        Error::NonFinite {
            buffer: "x",
            row: 2,
            col: 1,
        },
    ];
    for e in all {
        let s = e.to_string();
        assert!(!s.is_empty());
        let _: &dyn core::error::Error = &e;
    }
    assert_eq!(
        Error::LengthMismatch {
            buffer: "out",
            expected: 4,
            actual: 3
        }
        .to_string(),
        "`out` has length 3, the shapes require 4"
    );
    assert_eq!(
        Error::InvalidParameter {
            name: "margin",
            expected: "finite",
        }
        .to_string(),
        "parameter `margin` must be finite"
    );
    assert_eq!(
        Error::NonFinite {
            buffer: "x",
            row: 2,
            col: 1,
        }
        .to_string(),
        "`x` row 2, column 1 is NaN or infinite"
    );
}
