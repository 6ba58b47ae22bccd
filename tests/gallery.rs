//! Prepared galleries: `knn_gallery` against `knn` (the same search, bit for bit), against
//! its scalar twin, the inner-product metric, blocks of every remainder, and every error.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use proptest::prelude::*;
use triplet_kernels::{
    gallery_filter_len, gallery_norms_len, knn, knn_gallery, knn_gallery_workspace_len,
    knn_workspace_len, prepare_gallery, prepare_gallery_filtered, scalar, Error, Matrix, Metric,
    SearchMetric,
};

/// Deterministic data: small integers (exact distances) or standard-normal-like floats.
fn data(len: usize, seed: u64, integer: bool) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            if integer {
                (s % 9) as f32 - 4.0
            } else {
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0) as f32
            }
        })
        .collect()
}

type Lists = (Vec<u32>, Vec<f32>);

fn run_gallery(x: Matrix<'_>, y: Matrix<'_>, metric: SearchMetric, k: usize, twin: bool) -> Lists {
    let (n, m, d) = (x.rows(), y.rows(), x.dim());
    let mut norms = vec![0.0_f32; gallery_norms_len(m)];
    let g = prepare_gallery(y, metric, &mut norms).unwrap();
    let mut idx = vec![u32::MAX; n * k];
    let mut dist = vec![f32::NAN; n * k];
    if twin {
        let mut ws = vec![f32::NAN; scalar::knn_gallery_workspace_len(n, m, d)];
        scalar::knn_gallery(x, &g, k, &mut idx, &mut dist, &mut ws).unwrap();
    } else {
        let mut ws = vec![f32::NAN; knn_gallery_workspace_len(n, m, d)];
        knn_gallery(x, &g, k, &mut idx, &mut dist, &mut ws).unwrap();
    }
    (idx, dist)
}

fn run_knn(x: Matrix<'_>, y: Matrix<'_>, metric: Metric, k: usize) -> Lists {
    let (n, m, d) = (x.rows(), y.rows(), x.dim());
    let mut idx = vec![u32::MAX; n * k];
    let mut dist = vec![f32::NAN; n * k];
    let mut ws = vec![f32::NAN; knn_workspace_len(n, m, d)];
    knn(x, Some(y), metric, k, &mut idx, &mut dist, &mut ws).unwrap();
    (idx, dist)
}

const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];

/// Shapes on both sides of the query block (128), the reference block (512), the small
/// query block (4) and the register tile.
const SHAPES: [(usize, usize, usize); 7] = [
    (1, 1, 1),
    (3, 40, 7),
    (4, 513, 5),
    (17, 1030, 16),
    (129, 600, 3),
    (130, 77, 33),
    (260, 1100, 9),
];

#[test]
fn prepared_equals_knn_bit_for_bit() {
    for (seed, &(n, m, d)) in SHAPES.iter().enumerate() {
        for integer in [true, false] {
            let xd = data(n * d, seed as u64 * 2 + 1, integer);
            let yd = data(m * d, seed as u64 * 2 + 2, integer);
            let (x, y) = (
                Matrix::new(&xd, n, d).unwrap(),
                Matrix::new(&yd, m, d).unwrap(),
            );
            for metric in METRICS {
                for k in [1, 10.min(m), m] {
                    let a = run_gallery(x, y, metric.into(), k, false);
                    let b = run_knn(x, y, metric, k);
                    assert_eq!(a.0, b.0, "{n}x{m}x{d} {metric:?} k {k}");
                    assert_eq!(a.1, b.1, "{n}x{m}x{d} {metric:?} k {k}");
                }
            }
        }
    }
}

#[test]
fn integer_data_matches_the_twin_exactly() {
    // Small integers: every distance and inner product is exact in f32, so the lists are
    // those of the f64 twin, ties to the smaller index included.
    for (seed, &(n, m, d)) in SHAPES.iter().enumerate() {
        let xd = data(n * d, seed as u64 + 40, true);
        let yd = data(m * d, seed as u64 + 80, true);
        let (x, y) = (
            Matrix::new(&xd, n, d).unwrap(),
            Matrix::new(&yd, m, d).unwrap(),
        );
        for metric in [
            SearchMetric::SquaredEuclidean,
            SearchMetric::Euclidean,
            SearchMetric::InnerProduct,
        ] {
            for k in [1, 7.min(m), m] {
                let fast = run_gallery(x, y, metric, k, false);
                let twin = run_gallery(x, y, metric, k, true);
                assert_eq!(fast, twin, "{n}x{m}x{d} {metric:?} k {k}");
            }
        }
    }
}

#[test]
fn inner_product_ranks_the_largest_first() {
    // Rows with growing norms along one direction: the inner product prefers the longest,
    // cosine sees them all alike (up to rounding).
    let y: Vec<f32> = (1..=6).flat_map(|i| [i as f32, 0.0]).collect();
    let y = Matrix::new(&y, 6, 2).unwrap();
    let x = Matrix::new(&[1.0, 0.5], 1, 2).unwrap();
    let (idx, dist) = run_gallery(x, y, SearchMetric::InnerProduct, 3, false);
    assert_eq!(idx, [5, 4, 3]);
    assert_eq!(dist, [-6.0, -5.0, -4.0]);
    let (_, dist) = run_gallery(x, y, SearchMetric::Cosine, 6, false);
    let exact = 1.0 - 1.0 / 1.25_f32.sqrt();
    assert!(dist.iter().all(|&v| (v - exact).abs() < 1e-6), "{dist:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Float data: the inner products are those of the f64 twin within the documented
    /// bound, and each list is ordered.
    #[test]
    fn inner_product_within_the_bound(
        n in 1..20_usize, m in 1..600_usize, d in 1..40_usize, seed in any::<u64>(), k in 1..12_usize,
    ) {
        let k = k.min(m);
        let xd = data(n * d, seed, false);
        let yd = data(m * d, seed ^ 0x9e37, false);
        let (x, y) = (Matrix::new(&xd, n, d).unwrap(), Matrix::new(&yd, m, d).unwrap());
        let (idx, dist) = run_gallery(x, y, SearchMetric::InnerProduct, k, false);
        let (_, twin) = run_gallery(x, y, SearchMetric::InnerProduct, k, true);
        let u = f64::from(f32::EPSILON) / 2.0;
        for q in 0..n {
            let a = &xd[q * d..(q + 1) * d];
            for t in 0..k {
                let j = idx[q * k + t] as usize;
                let b = &yd[j * d..(j + 1) * d];
                let exact: f64 = -a.iter().zip(b).map(|(&p, &r)| f64::from(p) * f64::from(r)).sum::<f64>();
                let abs: f64 = a.iter().zip(b).map(|(&p, &r)| (f64::from(p) * f64::from(r)).abs()).sum();
                let got = f64::from(dist[q * k + t]);
                prop_assert!((got - exact).abs() <= (d as f64 + 2.0) * u * abs * 1.01 + 1e-30);
                // The t-th of the fast list is the t-th of the exact ranking within the bound.
                let tw = f64::from(twin[q * k + t]);
                prop_assert!((got - tw).abs() <= 2.0 * (d as f64 + 2.0) * u * abs * 1.01 + 4.0 * u * tw.abs() + 1e-30);
                if t > 0 {
                    prop_assert!(dist[q * k + t - 1] <= dist[q * k + t]);
                }
            }
        }
    }
}

#[test]
fn errors() {
    let yd = [1.0, 2.0, 3.0, f32::NAN, 5.0, 6.0];
    let y = Matrix::new(&yd, 3, 2).unwrap();
    let mut norms = [0.0_f32; 3];
    assert_eq!(
        prepare_gallery(y, SearchMetric::Cosine, &mut norms).unwrap_err(),
        Error::NonFinite {
            buffer: "gallery",
            row: 1,
            col: 1
        }
    );
    let yd = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let y = Matrix::new(&yd, 3, 2).unwrap();
    let mut short = [0.0_f32; 2];
    assert!(matches!(
        prepare_gallery(y, SearchMetric::Cosine, &mut short),
        Err(Error::LengthMismatch {
            buffer: "norms",
            ..
        })
    ));
    let mut norms = [0.0_f32; 3];
    let g = prepare_gallery(y, SearchMetric::SquaredEuclidean, &mut norms).unwrap();
    let x = Matrix::new(&[0.0, 0.0, 1.0, 1.0], 2, 2).unwrap();
    let mut idx = [7_u32; 4];
    let mut dist = [7.0_f32; 4];
    let mut ws = vec![0.0_f32; knn_gallery_workspace_len(2, 3, 2)];
    for k in [0, 4] {
        assert!(matches!(
            knn_gallery(
                x,
                &g,
                k,
                &mut idx[..2 * k.min(2)],
                &mut dist[..2 * k.min(2)],
                &mut ws
            ),
            Err(Error::InvalidParameter { name: "k", .. })
        ));
    }
    assert!(matches!(
        knn_gallery(x, &g, 2, &mut idx[..3], &mut dist, &mut ws),
        Err(Error::LengthMismatch {
            buffer: "indices",
            ..
        })
    ));
    let short = knn_gallery_workspace_len(2, 3, 2) - 1;
    assert!(matches!(
        knn_gallery(x, &g, 2, &mut idx, &mut dist, &mut ws[..short]),
        Err(Error::WorkspaceTooSmall { .. })
    ));
    let x3 = Matrix::new(&[0.0, 0.0, 1.0], 1, 3).unwrap();
    assert!(matches!(
        knn_gallery(x3, &g, 2, &mut idx[..2], &mut dist[..2], &mut ws),
        Err(Error::DimensionMismatch { .. })
    ));
    // Nothing was written by any refused call.
    assert_eq!(idx, [7; 4]);
    assert_eq!(dist, [7.0; 4]);
    knn_gallery(x, &g, 2, &mut idx, &mut dist, &mut ws).unwrap();
    assert_eq!(idx, [0, 1, 0, 1]);
    assert_eq!(dist, [5.0, 25.0, 1.0, 13.0]);
}

/// The filtered search (a tile of Gram-form values, in `f32`, from bf16-rounded rows
/// where the CPU has the bf16 dot product or from int8 rows where it has the int8 one,
/// and the direct recomputation of what the bar
/// keeps) returns exactly the lists of the unfiltered direct search: a single query takes
/// the direct path (no tile), so searching query by query is the reference.
#[test]
fn filtered_search_equals_the_direct_search_bit_for_bit() {
    let shapes = [(40, 700, 64), (130, 1030, 13), (17, 600, 128), (9, 520, 1)];
    for (seed, &(n, m, d)) in shapes.iter().enumerate() {
        // Clustered data as well as spread: many near-ties at the k-th boundary. And
        // rows with one outlier element, the int8 filter's worst case (a coarse scale:
        // the other elements quantized to a few codes, residuals up to half a step).
        for variant in 0..3 {
            let clustered = variant == 1;
            let mut xd = data(n * d, seed as u64 + 7, false);
            let mut yd = data(m * d, seed as u64 + 9, false);
            if clustered {
                for v in xd.iter_mut().chain(yd.iter_mut()) {
                    *v = 10.0 + *v * 1e-3;
                }
            }
            if variant == 2 {
                for (r, row) in xd.chunks_mut(d).chain(yd.chunks_mut(d)).enumerate() {
                    row[r % d] = if r % 2 == 0 { 60.0 } else { -45.0 };
                }
            }
            let (x, y) = (
                Matrix::new(&xd, n, d).unwrap(),
                Matrix::new(&yd, m, d).unwrap(),
            );
            for metric in [
                SearchMetric::SquaredEuclidean,
                SearchMetric::Cosine,
                SearchMetric::InnerProduct,
            ] {
                let k = 10;
                let all = run_gallery(x, y, metric, k, false);
                for q in 0..n {
                    let xq = Matrix::new(&xd[q * d..(q + 1) * d], 1, d).unwrap();
                    let one = run_gallery(xq, y, metric, k, false);
                    assert_eq!(
                        (&all.0[q * k..(q + 1) * k], bits(&all.1[q * k..(q + 1) * k])),
                        (&one.0[..], bits(&one.1)),
                        "{n}x{m}x{d} {metric:?} variant {variant} query {q}"
                    );
                }
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Rows beyond the direct form's range (`|a| |b|` above `f32::MAX / 4`, where the direct
/// cosine's denominator overflows) are never rejected by the tile: the k nearest stay the
/// head of the full ranking, whatever the direct values are there (a fuzz case).
#[test]
fn out_of_range_cosine_rows_keep_the_ranking_consistent() {
    let (n, d) = (40, 9);
    let mut xd = data(n * d, 77, true);
    // Row 22 with one huge element: its norm times most other rows' overflows.
    xd[22 * d + 8] = 1.0e38;
    let x = Matrix::new(&xd, n, d).unwrap();
    let run = |k: usize| {
        let mut idx = vec![0_u32; n * k];
        let mut dist = vec![0.0_f32; n * k];
        let mut ws = vec![0.0_f32; knn_workspace_len(n, n, d)];
        knn(x, None, Metric::Cosine, k, &mut idx, &mut dist, &mut ws).unwrap();
        (idx, dist)
    };
    let (all_i, all_d) = run(n - 1);
    for k in [1, 5, 15] {
        let (idx, dist) = run(k);
        for q in 0..n {
            assert_eq!(
                &idx[q * k..(q + 1) * k],
                &all_i[q * (n - 1)..q * (n - 1) + k],
                "k {k} query {q}"
            );
            assert_eq!(
                bits(&dist[q * k..(q + 1) * k]),
                bits(&all_d[q * (n - 1)..q * (n - 1) + k]),
                "k {k} query {q}"
            );
        }
    }
}

/// One search against the gallery prepared with its bf16 filter copy.
fn run_filtered(x: Matrix<'_>, y: Matrix<'_>, metric: SearchMetric, k: usize) -> (Lists, bool) {
    let (n, m, d) = (x.rows(), y.rows(), x.dim());
    let mut norms = vec![0.0_f32; gallery_norms_len(m)];
    let mut filter = vec![f32::NAN; gallery_filter_len(m, d)];
    let g = prepare_gallery_filtered(y, metric, &mut norms, &mut filter).unwrap();
    let mut idx = vec![u32::MAX; n * k];
    let mut dist = vec![f32::NAN; n * k];
    let mut ws = vec![f32::NAN; knn_gallery_workspace_len(n, m, d)];
    knn_gallery(x, &g, k, &mut idx, &mut dist, &mut ws).unwrap();
    ((idx, dist), g.filtered())
}

const SEARCH_METRICS: [SearchMetric; 4] = [
    SearchMetric::SquaredEuclidean,
    SearchMetric::Euclidean,
    SearchMetric::Cosine,
    SearchMetric::InnerProduct,
];

/// The filter copy changes nothing in the results: single queries (the row kernel), small
/// and full query blocks, every remainder of the reference blocks, every metric.
#[test]
fn filtered_gallery_equals_the_plain_one_bit_for_bit() {
    let shapes = [
        (1, 1, 1),
        (1, 600, 128),
        (2, 1030, 7),
        (3, 513, 33),
        (4, 700, 16),
        (17, 1030, 9),
        (130, 77, 5),
    ];
    for (seed, &(n, m, d)) in shapes.iter().enumerate() {
        for integer in [true, false] {
            let xd = data(n * d, seed as u64 * 2 + 11, integer);
            let yd = data(m * d, seed as u64 * 2 + 12, integer);
            let (x, y) = (
                Matrix::new(&xd, n, d).unwrap(),
                Matrix::new(&yd, m, d).unwrap(),
            );
            for metric in SEARCH_METRICS {
                for k in [1, 10.min(m), m] {
                    let plain = run_gallery(x, y, metric, k, false);
                    let (filtered, _) = run_filtered(x, y, metric, k);
                    assert_eq!(plain.0, filtered.0, "{n}x{m}x{d} {metric:?} k {k}");
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&plain.1), bits(&filtered.1), "{n}x{m}x{d} {metric:?}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random shapes and data, including rows the filter refuses (tiny elements) and
    /// duplicate gallery rows (ties): the same lists with and without the filter.
    #[test]
    fn filtered_gallery_matches_random(
        n in 1usize..=6,
        m in 1usize..=700,
        d in 1usize..=40,
        seed in 0u64..1000,
        tiny in any::<bool>(),
        dup in any::<bool>(),
        mi in 0usize..4,
    ) {
        let xd = data(n * d, seed * 2 + 1, seed % 3 == 0);
        let mut yd = data(m * d, seed * 2 + 2, seed % 3 == 0);
        if dup && m > 2 {
            let (a, b) = yd.split_at_mut(d);
            b[..d].copy_from_slice(a);
        }
        if tiny {
            yd[(m * d) / 2] = 1.0e-35;
        }
        let (x, y) = (Matrix::new(&xd, n, d).unwrap(), Matrix::new(&yd, m, d).unwrap());
        let metric = SEARCH_METRICS[mi];
        let k = 1 + (seed as usize) % m;
        let plain = run_gallery(x, y, metric, k, false);
        let (filtered, used) = run_filtered(x, y, metric, k);
        if tiny {
            prop_assert!(!used);
        }
        prop_assert_eq!(&plain.0, &filtered.0);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&plain.1), bits(&filtered.1));
    }
}

#[test]
fn filter_errors() {
    let yd = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let y = Matrix::new(&yd, 3, 2).unwrap();
    let mut norms = [0.0_f32; 3];
    let mut short = vec![0.0_f32; gallery_filter_len(3, 2) - 1];
    assert!(matches!(
        prepare_gallery_filtered(y, SearchMetric::Cosine, &mut norms, &mut short),
        Err(Error::LengthMismatch {
            buffer: "filter",
            ..
        })
    ));
    let mut filter = vec![0.0_f32; gallery_filter_len(3, 2)];
    let mut bad_norms = [0.0_f32; 2];
    assert!(matches!(
        prepare_gallery_filtered(y, SearchMetric::Cosine, &mut bad_norms, &mut filter),
        Err(Error::LengthMismatch {
            buffer: "norms",
            ..
        })
    ));
    let nan = [1.0, f32::NAN, 3.0, 4.0, 5.0, 6.0];
    let yn = Matrix::new(&nan, 3, 2).unwrap();
    assert!(matches!(
        prepare_gallery_filtered(yn, SearchMetric::Cosine, &mut norms, &mut filter),
        Err(Error::NonFinite {
            buffer: "gallery",
            row: 0,
            col: 1
        })
    ));
}

/// The int8 filter's worst case, built: a gallery row whose quantization residual is
/// aligned with the query (elements of 0.3 beside an outlier of 90 all quantize to 0),
/// so its filter value overestimates its distance by `2 <a, e_b> = 9`, and a decoy,
/// quantized exactly, 4 farther than it. The true nearest must still be found, in the
/// first gallery block (values) and in a later one (masks), for every query.
#[test]
fn aligned_quantization_residuals_do_not_hide_the_nearest() {
    let d = 16;
    let m = 1100;
    let mut yd = vec![0.0_f32; m * d];
    for row in yd.chunks_mut(d) {
        row[0] = 200.0; // Fillers, far from every query.
    }
    // The decoy: distance 89.98^2 + 15 (about 8111.4) to the queries.
    yd[..d].copy_from_slice(&[[89.98_f32].as_slice(), &[0.0; 15]].concat());
    let mut near = vec![0.3_f32; d];
    near[0] = 90.0; // Distance 8100 + 15 * 0.49 = 8107.35.
    let queries: Vec<f32> = (0..4)
        .flat_map(|_| [[0.0_f32].as_slice(), &[1.0; 15]].concat())
        .collect();
    let x = Matrix::new(&queries, 4, d).unwrap();
    for at in [1, 700] {
        let mut g = yd.clone();
        g[at * d..(at + 1) * d].copy_from_slice(&near);
        let y = Matrix::new(&g, m, d).unwrap();
        let mut idx = vec![u32::MAX; 4];
        let mut dist = vec![f32::NAN; 4];
        let mut ws = vec![f32::NAN; knn_workspace_len(4, m, d)];
        knn(
            x,
            Some(y),
            Metric::SquaredEuclidean,
            1,
            &mut idx,
            &mut dist,
            &mut ws,
        )
        .unwrap();
        assert_eq!(idx, [at as u32; 4], "nearest at {at}");
    }
}
