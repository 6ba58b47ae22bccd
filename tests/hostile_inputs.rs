//! One test per row of the README's hostile-input table: what the crate returns for each
//! class of bad or extreme input. Every failing call is also checked to write nothing.

use tk::{BatchParams, Error, Matrix, Metric, Mining, Triplet, TripletParams};
use triplet_kernels as tk;

const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];
const MININGS: [Mining; 3] = [Mining::All, Mining::BatchHard, Mining::SemiHard];

fn ws() -> Vec<f32> {
    vec![0.0; 1 << 14]
}

#[test]
fn length_mismatch_is_an_error_and_writes_nothing() {
    let xd = [0.5_f32; 12];
    let x = Matrix::new(&xd, 4, 3).unwrap();
    let mut out = [7.0_f32; 15];
    let mut grad = [7.0_f32; 11];
    assert_eq!(
        tk::pairwise_distances(x, Metric::Euclidean, &mut out, &mut ws()),
        Err(Error::LengthMismatch {
            buffer: "out",
            expected: 16,
            actual: 15
        })
    );
    assert_eq!(
        tk::triplet_batch_loss_grad(x, &[0, 0, 1, 1], BatchParams::new(), &mut grad, &mut ws()),
        Err(Error::LengthMismatch {
            buffer: "grad",
            expected: 12,
            actual: 11
        })
    );
    assert!(matches!(
        tk::triplet_batch_loss(x, &[0, 0, 1], BatchParams::new(), &mut ws()),
        Err(Error::LengthMismatch {
            buffer: "labels",
            expected: 4,
            actual: 3
        })
    ));
    assert!(out.iter().chain(&grad).all(|&v| v == 7.0));
}

#[test]
fn shape_overflow_is_an_error() {
    assert_eq!(
        Matrix::new(&[1.0], usize::MAX, 3),
        Err(Error::ShapeOverflow {
            rows: usize::MAX,
            cols: 3
        })
    );
}

#[test]
fn empty_batches_and_zero_dimensions_are_errors() {
    assert_eq!(
        Matrix::new(&[], 0, 4),
        Err(Error::EmptyMatrix { rows: 0, cols: 4 })
    );
    assert_eq!(
        Matrix::new(&[], 4, 0),
        Err(Error::EmptyMatrix { rows: 4, cols: 0 })
    );
}

#[test]
fn single_row_and_one_class_batches_give_zero_loss_and_gradient() {
    for (xd, labels) in [
        (vec![1.0_f32, 2.0], vec![7_u32]),
        (vec![1.0, 2.0, 3.0, 5.0], vec![7, 7]),
    ] {
        let n = labels.len();
        let x = Matrix::new(&xd, n, 2).unwrap();
        for metric in METRICS {
            for mining in MININGS {
                let p = BatchParams::new().with_metric(metric).with_mining(mining);
                let mut g = vec![f32::NAN; 2 * n];
                let out = tk::triplet_batch_loss_grad(x, &labels, p, &mut g, &mut ws()).unwrap();
                assert_eq!((out.loss, out.num_triplets, out.num_active), (0.0, 0, 0));
                assert!(g.iter().all(|&v| v == 0.0));
            }
            let cp = tk::ContrastiveParams::pytorch_metric_learning();
            let mut g = vec![f32::NAN; 2 * n];
            let l = tk::contrastive_loss_grad(x, &labels, metric, cp, &mut g, &mut ws()).unwrap();
            assert!(l.is_finite() && g.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn indices_out_of_range_are_errors() {
    let xd = [0.5_f32; 12];
    let x = Matrix::new(&xd, 4, 3).unwrap();
    let mut terms = [7.0_f32; 2];
    let r = tk::triplet_margin_loss(
        x,
        &[Triplet::new(0, 1, 2), Triplet::new(0, 4, 2)],
        TripletParams::new(),
        &mut terms,
        &mut ws(),
    );
    assert!(
        matches!(
            r,
            Err(Error::IndexOutOfRange {
                index: 4,
                bound: 4,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(terms, [7.0; 2]);
    let q = [tk::Quadruplet::new(0, 1, 2, 9)];
    let r = tk::quadruplet_loss(
        x,
        &q,
        Metric::Euclidean,
        tk::QuadrupletParams::new(1.0, 0.5),
        &mut ws(),
    );
    assert!(
        matches!(
            r,
            Err(Error::IndexOutOfRange {
                index: 9,
                bound: 4,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn proxy_labels_out_of_range_are_errors() {
    let xd = [0.5_f32; 12];
    let x = Matrix::new(&xd, 4, 3).unwrap();
    let proxies = Matrix::new(&xd[..6], 2, 3).unwrap();
    let labels = [0, 1, 2, 1];
    let r = tk::proxy_nca_loss(x, &labels, proxies, tk::ProxyNcaParams::new(1.0), &mut ws());
    assert!(
        matches!(
            r,
            Err(Error::IndexOutOfRange {
                index: 2,
                bound: 2,
                ..
            })
        ),
        "{r:?}"
    );
    let r = tk::proxy_anchor_loss(
        x,
        &labels,
        proxies,
        tk::ProxyAnchorParams::new(0.1, 32.0),
        &mut ws(),
    );
    assert!(
        matches!(
            r,
            Err(Error::IndexOutOfRange {
                index: 2,
                bound: 2,
                ..
            })
        ),
        "{r:?}"
    );
}

#[test]
fn nan_infinite_margins_and_bad_scales_are_errors_negative_margins_are_accepted() {
    let xd = [0.5_f32, 1.0, -1.0, 2.0, 0.0, 1.0, 3.0, -2.0];
    let x = Matrix::new(&xd, 4, 2).unwrap();
    let labels = [0, 0, 1, 1];
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let p = BatchParams::new().with_margin(bad);
        assert!(matches!(
            tk::triplet_batch_loss(x, &labels, p, &mut ws()),
            Err(Error::InvalidParameter { .. })
        ));
    }
    // A negative margin is a valid (if unusual) choice: it is applied as given.
    let p = BatchParams::new()
        .with_margin(-0.5)
        .with_mining(Mining::All);
    assert!(tk::triplet_batch_loss(x, &labels, p, &mut ws()).is_ok());
    let proxies = Matrix::new(&xd[..4], 2, 2).unwrap();
    for bad in [f32::NAN, f32::INFINITY, 0.0, -1.0] {
        let r = tk::proxy_nca_loss(x, &labels, proxies, tk::ProxyNcaParams::new(bad), &mut ws());
        assert!(
            matches!(r, Err(Error::InvalidParameter { .. })),
            "scale {bad}: {r:?}"
        );
        let r = tk::proxy_anchor_loss(
            x,
            &labels,
            proxies,
            tk::ProxyAnchorParams::new(0.1, bad),
            &mut ws(),
        );
        assert!(
            matches!(r, Err(Error::InvalidParameter { .. })),
            "alpha {bad}: {r:?}"
        );
    }
}

#[test]
fn nan_and_inf_in_data() {
    for bad in [f32::NAN, f32::INFINITY] {
        let xd = [0.5_f32, 1.0, bad, 2.0, 0.0, 1.0, 3.0, -2.0];
        let x = Matrix::new(&xd, 4, 2).unwrap();
        let labels = [0, 0, 1, 1];
        // Distances propagate: row 1 and column 1 are non-finite, the rest finite.
        let mut d = [0.0_f32; 16];
        tk::pairwise_distances(x, Metric::Euclidean, &mut d, &mut ws()).unwrap();
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(d[i * 4 + j].is_finite(), i == j || (i != 1 && j != 1));
            }
        }
        // Losses and retrieval metrics refuse the data and name the first bad element.
        let mut g = [7.0_f32; 8];
        assert_eq!(
            tk::triplet_batch_loss_grad(x, &labels, BatchParams::new(), &mut g, &mut ws()),
            Err(Error::NonFinite {
                buffer: "x",
                row: 1,
                col: 0,
            })
        );
        assert_eq!(g, [7.0; 8]);
        let cp = tk::ContrastiveParams::pytorch_metric_learning();
        assert!(matches!(
            tk::contrastive_loss(x, &labels, Metric::Euclidean, cp, &mut ws()),
            Err(Error::NonFinite { row: 1, col: 0, .. })
        ));
        assert!(matches!(
            tk::retrieval_metrics(x, &labels, None, Metric::Euclidean, 1, &mut ws()),
            Err(Error::NonFinite { row: 1, col: 0, .. })
        ));
    }
}

#[test]
fn magnitudes_whose_squares_overflow_never_panic() {
    let xd = [1e20_f32, 0.0, -1e20, 0.0, 3e19, 1e19, -2e19, 1e20];
    let x = Matrix::new(&xd, 4, 2).unwrap();
    let labels = [0, 0, 1, 1];
    let mut d = [0.0_f32; 16];
    tk::pairwise_distances(x, Metric::SquaredEuclidean, &mut d, &mut ws()).unwrap();
    assert_eq!(d[1], f32::INFINITY);
    // Cosine is scale-free in exact arithmetic, and the exact twin stays finite.
    let mut c = [0.0_f32; 16];
    tk::scalar::pairwise_distances(x, Metric::Cosine, &mut c, &mut ws()).unwrap();
    assert!(c.iter().all(|v| v.is_finite()));
    for metric in METRICS {
        for mining in MININGS {
            let p = BatchParams::new().with_metric(metric).with_mining(mining);
            let mut g = [0.0_f32; 8];
            // The documented data range: an error naming the largest element (row 0 and
            // row 3 both hold 1e20 in magnitude; the first is reported), never a panic or
            // a silently finite loss.
            assert_eq!(
                tk::triplet_batch_loss_grad(x, &labels, p, &mut g, &mut ws()).map(|_| ()),
                Err(Error::TooLarge {
                    buffer: "x",
                    row: 0,
                    col: 0
                })
            );
            // Normalised first, any finite data is accepted.
            let p = p.with_normalize(true);
            let out = tk::triplet_batch_loss_grad(x, &labels, p, &mut g, &mut ws()).unwrap();
            assert!(out.loss.is_finite() && g.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn duplicate_rows_give_finite_losses_and_gradients() {
    // Rows 0, 1 and 2 coincide: distance exactly 0 (the Euclidean gradient there is 0).
    let xd = [1.0_f32, 2.0, 1.0, 2.0, 1.0, 2.0, -1.0, 0.5];
    let x = Matrix::new(&xd, 4, 2).unwrap();
    let labels = [0, 0, 1, 1];
    let mut d = [f32::NAN; 16];
    tk::pairwise_distances(x, Metric::Euclidean, &mut d, &mut ws()).unwrap();
    assert_eq!((d[1], d[2], d[6]), (0.0, 0.0, 0.0));
    for metric in METRICS {
        for mining in MININGS {
            let p = BatchParams::new().with_metric(metric).with_mining(mining);
            let mut g = [f32::NAN; 8];
            let out = tk::triplet_batch_loss_grad(x, &labels, p, &mut g, &mut ws()).unwrap();
            assert!(
                out.loss.is_finite() && g.iter().all(|v| v.is_finite()),
                "{metric:?} {mining:?}"
            );
        }
        let mut g = [f32::NAN; 8];
        let cp = tk::ContrastiveParams::pytorch_metric_learning();
        let l = tk::contrastive_loss_grad(x, &labels, metric, cp, &mut g, &mut ws()).unwrap();
        assert!(l.is_finite() && g.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn short_workspaces_are_errors() {
    let xd = [0.5_f32; 12];
    let x = Matrix::new(&xd, 4, 3).unwrap();
    let mut small = [0.0_f32; 3];
    assert!(matches!(
        tk::triplet_batch_loss(x, &[0, 0, 1, 1], BatchParams::new(), &mut small),
        Err(Error::WorkspaceTooSmall { actual: 3, .. })
    ));
}

#[test]
fn k_out_of_range_for_knn_is_an_error() {
    let xd = [0.5_f32; 12];
    let x = Matrix::new(&xd, 4, 3).unwrap();
    let (mut idx, mut dist) = ([0_u32; 16], [0.0_f32; 16]);
    for k in [0, 4] {
        let r = tk::knn(
            x,
            None,
            Metric::Euclidean,
            k,
            &mut idx[..4 * k],
            &mut dist[..4 * k],
            &mut ws(),
        );
        assert_eq!(
            r,
            Err(Error::InvalidParameter {
                name: "k",
                expected: "1 <= k <= references a query can retrieve",
            }),
            "k = {k}"
        );
    }
}

/// Each kernel family's parameter error names the parameter and the condition its docs
/// state; the data error names the row and column of the first bad element.
#[test]
fn errors_state_the_violated_condition() {
    let xd = [0.5_f32, 1.0, -1.0, 2.0, 0.0, 1.0, 3.0, -2.0];
    let x = Matrix::new(&xd, 4, 2).unwrap();
    let labels = [0, 0, 1, 1];
    let msg = |r: Result<(), Error>| r.unwrap_err().to_string();

    let ts = [Triplet::new(0, 1, 2)];
    let mut terms = [0.0_f32; 1];
    let p = TripletParams::new()
        .with_metric(Metric::Cosine)
        .with_eps(1e-6);
    assert_eq!(
        msg(tk::triplet_margin_loss(x, &ts, p, &mut terms, &mut ws()).map(|_| ())),
        "parameter `eps` must be |eps| <= 1, and 0 for cosine"
    );
    let p = BatchParams::new().with_margin(1e31);
    assert_eq!(
        msg(tk::triplet_batch_loss(x, &labels, p, &mut ws()).map(|_| ())),
        "parameter `margin` must be finite, |margin| <= 2^100"
    );
    let cp = tk::ContrastiveParams::new(0.0, f32::NAN);
    assert_eq!(
        msg(tk::contrastive_loss(x, &labels, Metric::Euclidean, cp, &mut ws()).map(|_| ())),
        "parameter `neg_margin` must be finite"
    );
    let q = [tk::Quadruplet::new(0, 1, 2, 3)];
    let qp = tk::QuadrupletParams::new(f32::INFINITY, 0.5);
    assert_eq!(
        msg(tk::quadruplet_loss(x, &q, Metric::Euclidean, qp, &mut ws()).map(|_| ())),
        "parameter `margin1` must be finite"
    );
    let proxies = Matrix::new(&xd[..4], 2, 2).unwrap();
    let ap = tk::ProxyAnchorParams::new(0.1, 0.0);
    assert_eq!(
        msg(tk::proxy_anchor_loss(x, &labels, proxies, ap, &mut ws()).map(|_| ())),
        "parameter `alpha` must be finite and > 0"
    );
    assert_eq!(
        msg(tk::retrieval_metrics(x, &labels, None, Metric::Euclidean, 4, &mut ws()).map(|_| ())),
        "parameter `k` must be 1 <= k <= references a query can retrieve"
    );
    let mut tar = [0.0_f64; 1];
    let r = tk::verification_metrics(
        &[0.9],
        &[0.1],
        tk::Score::Similarity,
        &[1.5],
        &mut tar,
        &mut ws(),
    );
    assert_eq!(
        msg(r.map(|_| ())),
        "parameter `far_targets` must be in [0, 1]"
    );
    let r = tk::verification_metrics(
        &[0.9, f32::NAN],
        &[0.1],
        tk::Score::Similarity,
        &[],
        &mut [],
        &mut ws(),
    );
    assert_eq!(
        msg(r.map(|_| ())),
        "`genuine` row 1, column 0 is NaN or infinite"
    );
    let mut out = [0.0_f32; 8];
    #[allow(clippy::reversed_empty_ranges)]
    let rows = 2..1;
    let r = tk::pairwise_distances_rows(
        x,
        rows,
        Metric::Euclidean,
        tk::DistanceMode::Direct,
        &mut out,
        &mut ws(),
    );
    assert_eq!(msg(r), "parameter `rows` must be a range with start <= end");

    let mut bad = xd;
    bad[5] = f32::INFINITY;
    let xb = Matrix::new(&bad, 4, 2).unwrap();
    assert_eq!(
        msg(tk::triplet_batch_loss(xb, &labels, BatchParams::new(), &mut ws()).map(|_| ())),
        "`x` row 2, column 1 is NaN or infinite"
    );
}
