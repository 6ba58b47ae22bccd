//! Named regression tests for the numerics review: each reproducer it reported gives the
//! exact answer (or the documented error) in the fast kernel and in its scalar twin.

use proptest::prelude::*;
use triplet_kernels::{
    contrastive_loss, contrastive_loss_grad, contrastive_loss_workspace_len, cross_distances,
    cross_distances_workspace_len, hinge_reduce, hinge_reduce_grad, l2_normalize,
    l2_normalize_backward, pairwise_distances, pairwise_distances_workspace_len, proxy_nca_loss,
    proxy_nca_loss_workspace_len, quadruplet_loss_grad, quadruplet_loss_workspace_len, row_norms,
    scalar, triplet_batch_loss, triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_batch_loss_workspace_len, triplet_margin_loss, triplet_margin_loss_grad,
    triplet_margin_loss_workspace_len, BatchParams, ContrastiveParams, ContrastiveReduction, Error,
    Hinge, Matrix, Metric, Mining, ProxyNcaParams, Quadruplet, QuadrupletParams, Reduction,
    Triplet, TripletParams,
};

const U: f64 = 1.0 / (1u64 << 24) as f64;
const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];

/// A workspace long enough for a fast kernel (`fast`) and its scalar twin, whose `f64`
/// accumulators may need more room.
fn ws(fast: usize, x_len: usize) -> Vec<f32> {
    vec![f32::NAN; fast + 4 * x_len + 64]
}

/// Max over elements of `|got - want|`.
fn max_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------------
// One pair gradient: the difference first, then the scale.

/// Contrastive, two 1-d rows 1e-4 apart at 3: exact gradient [-2, 2] (the old two-step
/// update gave +-2.0019531 on AVX2/AVX-512 and +-2.0039063 on the portable backend).
#[test]
fn contrastive_near_pair_gradient() {
    let data = [3.0_f32, 3.0001];
    let x = Matrix::new(&data, 2, 1).unwrap();
    let params = ContrastiveParams::new(0.0, 1.0).with_reduction(ContrastiveReduction::Sum);
    let mut w = ws(contrastive_loss_workspace_len(2, 1), 2);
    let mut g = [f32::NAN; 2];
    contrastive_loss_grad(x, &[0, 0], Metric::Euclidean, params, &mut g, &mut w).unwrap();
    assert!(max_err(&g, &[-2.0, 2.0]) <= 4.0 * 2.0 * U, "fast {g:?}");
    scalar::contrastive_loss_grad(x, &[0, 0], Metric::Euclidean, params, &mut g, &mut w).unwrap();
    assert!(max_err(&g, &[-2.0, 2.0]) <= 2.0 * 2.0 * U, "twin {g:?}");
}

/// Rows offset by 1e4, pairs 1e-3 apart, d = 16: the relative error of the gradient was
/// 50 % (contrastive) and 33 % (quadruplet).
fn far_near_rows() -> (Vec<f32>, Vec<f64>) {
    let d = 16;
    let mut data = Vec::new();
    for r in 0..4 {
        for k in 0..d {
            let base = 1.0e4 + (k as f32) * 0.37;
            let offset = match r {
                0 => 0.0,
                1 => 1.0e-3 * ((k % 3) as f32 - 1.0) + 2.0e-3,
                2 => 0.5 + 0.01 * k as f32,
                _ => 0.5 + 0.01 * k as f32 + 1.5e-3 * ((k % 2) as f32),
            };
            data.push(base + offset);
        }
    }
    let exact = data.iter().map(|&v| f64::from(v)).collect();
    (data, exact)
}

/// `d d(a, b) / d a` in f64 for the Euclidean metric.
fn euclid_grad64(x: &[f64], d: usize, i: usize, j: usize) -> Vec<f64> {
    let diff: Vec<f64> = (0..d).map(|k| x[i * d + k] - x[j * d + k]).collect();
    let n = diff.iter().map(|t| t * t).sum::<f64>().sqrt();
    diff.iter().map(|t| t / n).collect()
}

#[test]
fn contrastive_far_near_pairs_gradient() {
    let (data, x64) = far_near_rows();
    let d = 16;
    let x = Matrix::new(&data, 4, d).unwrap();
    let labels = [0, 0, 1, 1];
    // Positive pairs only count (pos margin 0: every positive distance is active); the
    // negatives are far beyond the negative margin.
    let params = ContrastiveParams::new(0.0, 1e-6).with_reduction(ContrastiveReduction::Sum);
    let mut exact = vec![0.0_f64; 4 * d];
    for (i, j) in [(0, 1), (2, 3)] {
        let g = euclid_grad64(&x64, d, i, j);
        for k in 0..d {
            exact[i * d + k] += 2.0 * g[k];
            exact[j * d + k] -= 2.0 * g[k];
        }
    }
    let mut w = ws(contrastive_loss_workspace_len(4, d), 4 * d);
    let mut g = vec![f32::NAN; 4 * d];
    contrastive_loss_grad(x, &labels, Metric::Euclidean, params, &mut g, &mut w).unwrap();
    let err = max_err(&g, &exact);
    assert!(
        err <= 1e-5,
        "fast: max error {err} on a gradient of scale 2"
    );
    scalar::contrastive_loss_grad(x, &labels, Metric::Euclidean, params, &mut g, &mut w).unwrap();
    let err = max_err(&g, &exact);
    assert!(err <= 8.0 * U, "twin: max error {err}");
}

#[test]
fn quadruplet_far_near_pairs_gradient() {
    let (data, x64) = far_near_rows();
    let d = 16;
    let x = Matrix::new(&data, 4, d).unwrap();
    // (a, p, n1, n2) = (0, 1, 2, 3): d(a,p) ~ 4e-3, d(a,n1) ~ 2.6, d(n1,n2) ~ 4e-3, so with
    // margins 10 both terms are active: grad = 2 d'(a,p) - d'(a,n1) - d'(n1,n2).
    let q = [Quadruplet::new(0, 1, 2, 3)];
    let params = QuadrupletParams::new(10.0, 10.0).with_reduction(Reduction::Sum);
    let mut exact = vec![0.0_f64; 4 * d];
    for ((i, j), c) in [((0, 1), 2.0), ((0, 2), -1.0), ((2, 3), -1.0)] {
        let g = euclid_grad64(&x64, d, i, j);
        for k in 0..d {
            exact[i * d + k] += c * g[k];
            exact[j * d + k] -= c * g[k];
        }
    }
    let mut w = ws(quadruplet_loss_workspace_len(4, d), 4 * d);
    let mut g = vec![f32::NAN; 4 * d];
    quadruplet_loss_grad(x, &q, Metric::Euclidean, params, &mut g, &mut w).unwrap();
    let err = max_err(&g, &exact);
    assert!(
        err <= 1e-5,
        "fast: max error {err} on a gradient of scale 2"
    );
    scalar::quadruplet_loss_grad(x, &q, Metric::Euclidean, params, &mut g, &mut w).unwrap();
    let err = max_err(&g, &exact);
    assert!(err <= 8.0 * U, "twin: max error {err}");
}

/// x = [0, 1e-23, 1], triplet (0, 1, 2), margin 2, Euclidean: the squared distance of the
/// first pair underflows f32, but its gradient is that of a distance of 1e-23: exact
/// gradient [0, 1, -1] (the fast kernel gave [1, 0, -1]).
#[test]
fn euclidean_gradient_survives_underflowing_squared_distance() {
    let data = [0.0_f32, 1e-23, 1.0];
    let x = Matrix::new(&data, 3, 1).unwrap();
    let t = [Triplet::new(0, 1, 2)];
    let params = TripletParams::new()
        .with_margin(2.0)
        .with_reduction(Reduction::Sum);
    let mut w = ws(triplet_margin_loss_workspace_len(3, 1), 3);
    let (mut terms, mut g) = ([0.0_f32; 1], [f32::NAN; 3]);
    let loss = triplet_margin_loss_grad(x, &t, params, &mut terms, &mut g, &mut w).unwrap();
    assert_eq!(g, [0.0, 1.0, -1.0]);
    assert_eq!(loss, 1.0);
    scalar::triplet_margin_loss_grad(x, &t, params, &mut terms, &mut g, &mut w).unwrap();
    assert_eq!(g, [0.0, 1.0, -1.0]);
}

// ---------------------------------------------------------------------------------------
// Overflow-safe normalisation, norms and cosine.

#[test]
fn normalize_rows_whose_squared_norm_overflows() {
    let data = [1.9e19_f32, 0.0, 3e38, -3e38, 1e-30, 1e-30, 0.0, 0.0];
    let x = Matrix::new(&data, 4, 2).unwrap();
    for out in [&mut [f32::NAN; 8], &mut [f32::NAN; 8]] {
        l2_normalize(x, out).unwrap();
        assert_eq!(out[..2], [1.0, 0.0]);
        let h = core::f32::consts::FRAC_1_SQRT_2;
        assert!(
            (out[2] - h).abs() <= 2e-7 && (out[3] + h).abs() <= 2e-7,
            "{out:?}"
        );
        // Below the 1e-12 clamp: x / 1e-12.
        assert!((out[4] - 1e-18).abs() <= 1e-24, "{out:?}");
        assert_eq!(out[6..], [0.0, 0.0]);
    }
    let mut twin = [f32::NAN; 8];
    scalar::l2_normalize(x, &mut twin).unwrap();
    assert_eq!(twin[..2], [1.0, 0.0]);
    let mut norms = [f32::NAN; 4];
    row_norms(x, &mut norms).unwrap();
    assert_eq!(norms[0], 1.9e19);
    assert_eq!(norms[1], f32::INFINITY); // the exact norm, 4.2e38, exceeds f32::MAX
    assert!(
        (f64::from(norms[2]) - 1e-30 * 2f64.sqrt()).abs() <= 1e-36,
        "{norms:?}"
    );
    // The backward pass of a long row: the gradient of x / |x| along x is 0, across it
    // 1 / |x|.
    let mut gx = [f32::NAN; 8];
    let gy = [1.0_f32, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    l2_normalize_backward(x, &gy, &mut gx).unwrap();
    assert_eq!(gx[0], 0.0);
    assert!((f64::from(gx[1]) - 1.0 / 1.9e19).abs() <= 1e-26, "{gx:?}");
}

/// `pml_triplet_margin()` on 4 x 2 rows scaled by 1e20 returned loss 0.05 with 8 active
/// triplets (every row normalised to zero); the twin and the exact answer: 0.
#[test]
fn pml_triplet_margin_on_huge_rows() {
    let base = [1.0_f32, 0.0, 0.9, 0.1, -1.0, 0.0, -0.9, -0.1];
    let data: Vec<f32> = base.iter().map(|v| v * 1e20).collect();
    let x = Matrix::new(&data, 4, 2).unwrap();
    let labels = [0, 0, 1, 1];
    let p = BatchParams::pml_triplet_margin();
    let mut w = ws(triplet_batch_loss_workspace_len(4, 2, p), 8);
    let fast = triplet_batch_loss(x, &labels, p, &mut w).unwrap();
    let twin = scalar::triplet_batch_loss(x, &labels, p, &mut w).unwrap();
    assert_eq!((fast.loss, fast.num_active), (0.0, 0));
    assert_eq!((twin.loss, twin.num_active), (0.0, 0));
    // The same data at unit scale gives the same answer.
    let small = Matrix::new(&base, 4, 2).unwrap();
    assert_eq!(triplet_batch_loss(small, &labels, p, &mut w).unwrap(), fast);
}

/// `proxy_nca_loss` on rows scaled by 1e20 returned ln 2 (every row taken as zero).
#[test]
fn proxy_nca_on_huge_rows() {
    let base = [1.0_f32, 0.0, 0.0, 1.0];
    let data: Vec<f32> = base.iter().map(|v| v * 1e20).collect();
    let x = Matrix::new(&data, 2, 2).unwrap();
    let small = Matrix::new(&base, 2, 2).unwrap();
    let proxies = Matrix::new(&base, 2, 2).unwrap();
    let p = ProxyNcaParams::pytorch_metric_learning();
    let mut w = ws(proxy_nca_loss_workspace_len(2, 2, 2), 4);
    let huge = proxy_nca_loss(x, &[0, 1], proxies, p, &mut w).unwrap();
    let unit = proxy_nca_loss(small, &[0, 1], proxies, p, &mut w).unwrap();
    let twin = scalar::proxy_nca_loss(x, &[0, 1], proxies, p, &mut w).unwrap();
    assert_eq!(huge, unit);
    assert!(
        (f64::from(huge) - f64::from(twin)).abs() <= 1e-6,
        "{huge} {twin}"
    );
    assert!(
        (huge - core::f32::consts::LN_2).abs() > 0.1,
        "rows taken as zero: {huge}"
    );
}

#[test]
fn cosine_matrices_of_huge_rows_are_finite() {
    let data = [3e38_f32, 3e38, 1.0, 1.0, -2e30, 0.0];
    let x = Matrix::new(&data, 3, 2).unwrap();
    let mut out = [f32::NAN; 9];
    let mut w = vec![f32::NAN; pairwise_distances_workspace_len(3, 2)];
    pairwise_distances(x, Metric::Cosine, &mut out, &mut w).unwrap();
    let mut twin = [f32::NAN; 9];
    scalar::pairwise_distances(x, Metric::Cosine, &mut twin, &mut w).unwrap();
    // Within the documented cosine bound (2 d + 10) 2^-24 of the exact distances.
    for (f, t) in out.iter().zip(&twin) {
        assert!((f - t).abs() <= 14.0 * 6e-8, "{out:?} vs {twin:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The cosine zero row: the pairwise diagonal is the formula's value.

#[test]
fn cosine_zero_row_is_at_distance_one_from_itself() {
    let data = [0.0_f32, 0.0, 3.0, 4.0];
    let x = Matrix::new(&data, 2, 2).unwrap();
    let mut p = [f32::NAN; 4];
    let mut c = [f32::NAN; 4];
    let mut w = vec![f32::NAN; cross_distances_workspace_len(2, 2, 2)];
    pairwise_distances(x, Metric::Cosine, &mut p, &mut w).unwrap();
    cross_distances(x, x, Metric::Cosine, &mut c, &mut w).unwrap();
    assert_eq!(p, [1.0, 1.0, 1.0, 0.0]);
    // The cross matrix computes 1 - cos(x_1, x_1) with its rounding: within its bound.
    assert_eq!(c[..3], [1.0, 1.0, 1.0]);
    assert!(c[3].abs() <= 14.0 * 6e-8);
    scalar::pairwise_distances(x, Metric::Cosine, &mut p, &mut w).unwrap();
    assert_eq!(p, [1.0, 1.0, 1.0, 0.0]);
    // Explicit triplets: a == p on a zero row is at cosine distance 1.
    let t = [Triplet::new(0, 0, 1)];
    let params = TripletParams::new()
        .with_metric(Metric::Cosine)
        .with_margin(0.5);
    let mut terms = [f32::NAN];
    let mut tw = ws(triplet_margin_loss_workspace_len(2, 2), 4);
    let loss = triplet_margin_loss(x, &t, params, &mut terms, &mut tw).unwrap();
    // d(a, a) - d(a, n) + 0.5 = 1 - 1 + 0.5.
    assert_eq!(loss, 0.5);
}

/// Values spanning a few orders of magnitude, with exact zero rows mixed in.
fn rows_with_zeros() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..=12, 1usize..=20).prop_flat_map(|(n, d)| {
        let row = prop_oneof![
            1 => Just(vec![0.0_f32; d]),
            1 => proptest::collection::vec(-1.0e-13_f32..1.0e-13, d),
            4 => proptest::collection::vec(-100.0_f32..100.0, d),
        ];
        (
            Just(n),
            Just(d),
            proptest::collection::vec(row, n).prop_map(|rows| rows.concat()),
        )
    })
}

proptest! {
    /// `pairwise_distances(x)` and `cross_distances(x, x)` agree within the documented
    /// Gram bounds for every metric, zero and sub-clamp rows included.
    #[test]
    fn pairwise_agrees_with_cross_of_itself((n, d, data) in rows_with_zeros()) {
        let x = Matrix::new(&data, n, d).unwrap();
        let mut w = vec![f32::NAN; cross_distances_workspace_len(n, n, d)
            .max(pairwise_distances_workspace_len(n, d))];
        for metric in METRICS {
            let mut p = vec![f32::NAN; n * n];
            let mut c = vec![f32::NAN; n * n];
            pairwise_distances(x, metric, &mut p, &mut w).unwrap();
            cross_distances(x, x, metric, &mut c, &mut w).unwrap();
            for i in 0..n {
                let ri = x.row(i).unwrap();
                for j in 0..n {
                    let rj = x.row(j).unwrap();
                    let nn: f64 = ri.iter().chain(rj).map(|&v| f64::from(v) * f64::from(v)).sum();
                    // Twice the documented bound: both results are within it of the exact value.
                    let tol = match metric {
                        Metric::SquaredEuclidean => 2.0 * (2.0 * d as f64 + 4.0) * U * nn,
                        Metric::Euclidean => (2.0 * (2.0 * d as f64 + 4.0) * U * nn).sqrt() + 1e-30,
                        Metric::Cosine => 2.0 * (2.0 * d as f64 + 10.0) * U,
                        _ => unreachable!("a variant this test does not know"),
                    } * 1.01;
                    let (a, b) = (f64::from(p[i * n + j]), f64::from(c[i * n + j]));
                    prop_assert!((a - b).abs() <= tol, "{metric:?} ({i},{j}): pairwise {a} cross {b} tol {tol}");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One rule for data whose squared distances overflow f32.

#[test]
fn overflowing_rows_are_an_error_for_every_mining_strategy() {
    let data = [3e19_f32, -3e19, -3e19, 3e19, 3e19, 3e19, -3e19, -3e19];
    let x = Matrix::new(&data, 4, 2).unwrap();
    let labels = [0, 0, 1, 1];
    let too_large = Error::TooLarge {
        buffer: "x",
        row: 0,
        col: 0,
    };
    let want = Err(too_large);
    for mining in [Mining::All, Mining::BatchHard, Mining::SemiHard] {
        for metric in METRICS {
            let p = BatchParams::new().with_mining(mining).with_metric(metric);
            let mut w = ws(triplet_batch_loss_grad_workspace_len(4, 2, p), 8);
            let mut g = [0.0_f32; 8];
            assert_eq!(triplet_batch_loss(x, &labels, p, &mut w).map(|_| ()), want);
            assert_eq!(
                triplet_batch_loss_grad(x, &labels, p, &mut g, &mut w).map(|_| ()),
                want
            );
            assert_eq!(
                scalar::triplet_batch_loss(x, &labels, p, &mut w).map(|_| ()),
                want
            );
            assert_eq!(
                scalar::triplet_batch_loss_grad(x, &labels, p, &mut g, &mut w).map(|_| ()),
                want
            );
            // Normalised first: any finite data is fine, and the answer is that of the
            // unit-scale rows.
            let pn = p.with_normalize(true);
            let unit: Vec<f32> = data.iter().map(|v| v / 3e19).collect();
            let xu = Matrix::new(&unit, 4, 2).unwrap();
            let big = triplet_batch_loss(x, &labels, pn, &mut w).unwrap();
            assert_eq!(big, triplet_batch_loss(xu, &labels, pn, &mut w).unwrap());
        }
    }
    let params = ContrastiveParams::pytorch_metric_learning();
    let mut w = ws(contrastive_loss_workspace_len(4, 2), 8);
    assert_eq!(
        contrastive_loss(x, &labels, Metric::Euclidean, params, &mut w).map(|_| ()),
        want
    );
    let t = [Triplet::new(0, 1, 2)];
    let mut terms = [0.0_f32];
    let mut w = ws(triplet_margin_loss_workspace_len(4, 2), 8);
    assert_eq!(
        triplet_margin_loss(x, &t, TripletParams::new(), &mut terms, &mut w).map(|_| ()),
        want
    );
    assert_eq!(
        scalar::triplet_margin_loss(x, &t, TripletParams::new(), &mut terms, &mut w).map(|_| ()),
        want
    );
    // The error names where the offending value is.
    let e = too_large.to_string();
    assert!(e.contains("row 0, column 0"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Sums that overflowed f32.

#[test]
fn running_sums_do_not_overflow() {
    assert_eq!(
        hinge_reduce(&[f32::MAX, f32::MAX], Hinge::Relu, Reduction::Mean),
        Ok(f32::MAX)
    );
    let mut g = [0.0_f32; 2];
    assert_eq!(
        hinge_reduce_grad(&[f32::MAX, f32::MAX], Hinge::Relu, Reduction::Mean, &mut g),
        Ok(f32::MAX)
    );
    // Contrastive with a negative margin of 3e38: every negative term is about 3e38.
    let data = [0.0_f32, 1.0, 2.0, 3.0];
    let x = Matrix::new(&data, 4, 1).unwrap();
    let labels = [0, 1, 2, 3];
    let params = ContrastiveParams::new(0.0, 3e38).with_reduction(ContrastiveReduction::Mean);
    let mut w = ws(contrastive_loss_workspace_len(4, 1), 4);
    let fast = contrastive_loss(x, &labels, Metric::Euclidean, params, &mut w).unwrap();
    let twin = scalar::contrastive_loss(x, &labels, Metric::Euclidean, params, &mut w).unwrap();
    assert!(
        fast.is_finite() && (fast - twin).abs() <= twin * 1e-6,
        "{fast} {twin}"
    );
    // Batch losses: a margin above 2^100 is refused (their row sums are f32 lanes).
    let p = BatchParams::new()
        .with_margin(3e38)
        .with_reduction(Reduction::Mean);
    let mut w = ws(triplet_batch_loss_workspace_len(4, 1, p), 4);
    let want = Err(Error::InvalidParameter {
        name: "margin",
        expected: "finite, |margin| <= 2^100",
    });
    assert_eq!(
        triplet_batch_loss(x, &[0, 0, 1, 1], p, &mut w).map(|_| ()),
        want
    );
    assert_eq!(
        scalar::triplet_batch_loss(x, &[0, 0, 1, 1], p, &mut w).map(|_| ()),
        want
    );
    let p = BatchParams::new()
        .with_margin(1e30)
        .with_reduction(Reduction::Mean);
    let out = triplet_batch_loss(x, &[0, 0, 1, 1], p, &mut w).unwrap();
    assert!(out.loss.is_finite() && (f64::from(out.loss) - 1e30).abs() <= 1e24);
}

#[test]
fn eps_outside_its_range_is_an_error() {
    let data = [0.0_f32, 1.0, 3.0];
    let x = Matrix::new(&data, 3, 1).unwrap();
    let t = [Triplet::new(0, 1, 2)];
    let mut terms = [0.0_f32];
    let mut w = ws(triplet_margin_loss_workspace_len(3, 1), 3);
    for eps in [1e30_f32, -2.0, f32::NAN, f32::INFINITY] {
        let p = TripletParams::new().with_eps(eps);
        let want = Err(Error::InvalidParameter {
            name: "eps",
            expected: "|eps| <= 1, and 0 for cosine",
        });
        assert_eq!(triplet_margin_loss(x, &t, p, &mut terms, &mut w), want);
        assert_eq!(
            scalar::triplet_margin_loss(x, &t, p, &mut terms, &mut w),
            want
        );
    }
    let p = TripletParams::new().with_eps(1.0);
    assert!(triplet_margin_loss(x, &t, p, &mut terms, &mut w)
        .unwrap()
        .is_finite());
}

/// d = 1, x = [0, 1e8, 0.25, 0], squared Euclidean, margin 1e17, sum, triplets (0,1,2),
/// 1000 x (0,2,3), (0,2,1): the exact gradient of row 0 is -500. The twin gives it; the
/// fast kernel accumulates in f32 and is held to its documented bound
/// `(m + d / 8 + 16) 2^-24 G` (`m` updates of row 0, `G` the sum of their magnitudes).
#[test]
fn cancelling_explicit_triplets() {
    let data = [0.0_f32, 1e8, 0.25, 0.0];
    let x = Matrix::new(&data, 4, 1).unwrap();
    let mut t = vec![Triplet::new(0, 1, 2)];
    t.extend(std::iter::repeat_n(Triplet::new(0, 2, 3), 1000));
    t.push(Triplet::new(0, 2, 1));
    let p = TripletParams::new()
        .with_metric(Metric::SquaredEuclidean)
        .with_margin(1e17)
        .with_reduction(Reduction::Sum);
    let mut terms = vec![0.0_f32; t.len()];
    let mut g = [f32::NAN; 4];
    let mut w = ws(triplet_margin_loss_workspace_len(4, 1), 4);
    scalar::triplet_margin_loss_grad(x, &t, p, &mut terms, &mut g, &mut w).unwrap();
    assert_eq!(g[0], -500.0, "twin");
    triplet_margin_loss_grad(x, &t, p, &mut terms, &mut g, &mut w).unwrap();
    // Row 0 receives 2 updates per triplet; their magnitudes sum to 4e8 + 1000 + 1.
    let bound = (2.0 * 1002.0 + 1.0 / 8.0 + 16.0) * U * (4e8 + 1001.0);
    assert!(
        (f64::from(g[0]) + 500.0).abs() <= bound,
        "fast {} bound {bound}",
        g[0]
    );
}

/// Pairs at subnormal distance (found by fuzzing after the underflow fix): the gradient
/// is the unit direction times the coefficient, finite, never `coef / dist = inf`.
#[test]
fn euclidean_gradient_of_subnormal_distances_is_finite() {
    let data = [0.0_f32, 1e-44];
    let x = Matrix::new(&data, 2, 1).unwrap();
    let params = ContrastiveParams::new(0.0, 1.0).with_reduction(ContrastiveReduction::Sum);
    let mut w = ws(contrastive_loss_workspace_len(2, 1), 2);
    let mut g = [f32::NAN; 2];
    contrastive_loss_grad(x, &[0, 1], Metric::Euclidean, params, &mut g, &mut w).unwrap();
    // Negative pair inside the margin: the loss 2 (1 - d) pulls the rows apart.
    assert_eq!(g, [2.0, -2.0]);
    scalar::contrastive_loss_grad(x, &[0, 1], Metric::Euclidean, params, &mut g, &mut w).unwrap();
    assert_eq!(g, [2.0, -2.0]);
    let data = [1.171_584e-38_f32, 0.0, 1.175_494_4e-38, 0.0];
    let x = Matrix::new(&data, 2, 2).unwrap();
    let t = [Triplet::new(0, 1, 0)];
    let params = TripletParams::new()
        .with_margin(1.0)
        .with_reduction(Reduction::Sum);
    let (mut terms, mut g) = ([0.0_f32; 1], [f32::NAN; 4]);
    let mut w = ws(triplet_margin_loss_workspace_len(2, 2), 4);
    triplet_margin_loss_grad(x, &t, params, &mut terms, &mut g, &mut w).unwrap();
    // The difference is subnormal (a few significant bits): within a few ulp of the unit.
    assert!(max_err(&g, &[-1.0, 0.0, 1.0, 0.0]) <= 4.0 * U, "{g:?}");
}

/// The same through the batch losses' fused per-triplet update (batch-hard, semi-hard).
#[test]
fn batch_gradients_of_subnormal_distances_are_finite() {
    let data = [0.0_f32, 1e-44, 1.0];
    let x = Matrix::new(&data, 3, 1).unwrap();
    for mining in [Mining::BatchHard, Mining::SemiHard, Mining::All] {
        let p = BatchParams::new()
            .with_mining(mining)
            .with_metric(Metric::Euclidean)
            .with_margin(1.0)
            .with_reduction(Reduction::Sum);
        let mut w = ws(triplet_batch_loss_grad_workspace_len(3, 1, p), 3);
        let (mut g, mut t) = ([f32::NAN; 3], [f32::NAN; 3]);
        triplet_batch_loss_grad(x, &[0, 0, 1], p, &mut g, &mut w).unwrap();
        scalar::triplet_batch_loss_grad(x, &[0, 0, 1], p, &mut t, &mut w).unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{mining:?}: {g:?}");
        let t64: Vec<f64> = t.iter().map(|&v| f64::from(v)).collect();
        assert!(
            max_err(&g, &t64) <= 8.0 * U,
            "{mining:?}: fast {g:?} twin {t:?}"
        );
    }
}
