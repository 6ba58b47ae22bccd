//! Row blocks and distance modes: the `*_rows` kernels and their twins, every error
//! path, threads writing disjoint blocks of one matrix.

#![allow(clippy::reversed_empty_ranges)]

use triplet_kernels::{
    cross_distances, cross_distances_rows, cross_distances_rows_workspace_len,
    cross_distances_workspace_len, pairwise_distances, pairwise_distances_rows,
    pairwise_distances_rows_workspace_len, pairwise_distances_workspace_len, scalar, DistanceMode,
    Error, Matrix, Metric,
};

const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];
const MODES: [DistanceMode; 2] = [DistanceMode::Gram, DistanceMode::Direct];

fn data(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

type PairRows = fn(
    Matrix<'_>,
    std::ops::Range<usize>,
    Metric,
    DistanceMode,
    &mut [f32],
    &mut [f32],
) -> Result<(), Error>;
type CrossRows = fn(
    Matrix<'_>,
    Matrix<'_>,
    std::ops::Range<usize>,
    Metric,
    DistanceMode,
    &mut [f32],
    &mut [f32],
) -> Result<(), Error>;

#[test]
fn rows_error_paths_write_nothing() {
    let xd = data(5 * 3, 1);
    let x = Matrix::new(&xd, 5, 3).unwrap();
    let yd = data(4 * 2, 2);
    let y2 = Matrix::new(&yd, 4, 2).unwrap();
    let mut out = [7.0_f32; 5 * 5];
    let need = pairwise_distances_rows_workspace_len(5, 2, 3);
    let need_c = cross_distances_rows_workspace_len(2, 5, 3);
    let mut ws = vec![0.0_f32; need.max(need_c)];
    let m = Metric::Euclidean;
    let g = DistanceMode::Gram;
    for pw in [
        pairwise_distances_rows as PairRows,
        scalar::pairwise_distances_rows,
    ] {
        assert_eq!(
            pw(x, 3..6, m, g, &mut out[..15], &mut ws),
            Err(Error::IndexOutOfRange {
                buffer: "rows",
                position: 1,
                index: 6,
                bound: 6
            })
        );
        assert!(matches!(
            pw(x, 3..1, m, g, &mut out[..0], &mut ws),
            Err(Error::InvalidParameter { name: "rows", .. })
        ));
        assert_eq!(
            pw(x, 1..3, m, g, &mut out[..9], &mut ws),
            Err(Error::LengthMismatch {
                buffer: "out",
                expected: 10,
                actual: 9
            })
        );
        assert_eq!(
            pw(x, 1..3, m, g, &mut out[..10], &mut ws[..need - 1]),
            Err(Error::WorkspaceTooSmall {
                required: need,
                actual: need - 1
            })
        );
        // An empty block is valid and writes nothing.
        assert_eq!(pw(x, 5..5, m, g, &mut out[..0], &mut ws), Ok(()));
        assert_eq!(pw(x, 0..0, m, g, &mut out[..0], &mut []), Ok(()));
    }
    for cr in [
        cross_distances_rows as CrossRows,
        scalar::cross_distances_rows,
    ] {
        assert_eq!(
            cr(x, y2, 0..2, m, g, &mut out[..8], &mut ws),
            Err(Error::DimensionMismatch { left: 3, right: 2 })
        );
        assert_eq!(
            cr(x, x, 4..6, m, g, &mut out[..10], &mut ws),
            Err(Error::IndexOutOfRange {
                buffer: "rows",
                position: 1,
                index: 6,
                bound: 6
            })
        );
        assert!(matches!(
            cr(x, x, 2..1, m, g, &mut out[..0], &mut ws),
            Err(Error::InvalidParameter { name: "rows", .. })
        ));
        assert_eq!(
            cr(x, x, 0..2, m, g, &mut out[..11], &mut ws),
            Err(Error::LengthMismatch {
                buffer: "out",
                expected: 10,
                actual: 11
            })
        );
        assert_eq!(
            cr(x, x, 0..2, m, g, &mut out[..10], &mut ws[..need_c - 1]),
            Err(Error::WorkspaceTooSmall {
                required: need_c,
                actual: need_c - 1
            })
        );
        assert_eq!(cr(x, x, 2..2, m, g, &mut out[..0], &mut []), Ok(()));
    }
    assert!(out.iter().all(|&v| v == 7.0), "a failing call wrote");
}

#[test]
fn workspace_lengths_are_const_and_saturate() {
    const PW: usize = pairwise_distances_workspace_len(4, 3);
    const CR: usize = cross_distances_workspace_len(4, 1000, 3);
    const ROWS: usize = pairwise_distances_rows_workspace_len(4, 4, 3);
    assert_eq!(PW, ROWS);
    assert_eq!(CR, cross_distances_rows_workspace_len(4, 1000, 3));
    // A block needs no more than the whole matrix.
    assert!(
        pairwise_distances_rows_workspace_len(40, 10, 3)
            <= cross_distances_workspace_len(10, 40, 3)
    );
    assert_eq!(pairwise_distances_workspace_len(usize::MAX, 2), usize::MAX);
    assert_eq!(cross_distances_workspace_len(3, 3, usize::MAX), usize::MAX);
}

#[test]
fn scalar_rows_twins_are_slices_of_the_whole() {
    let (n, m, d) = (9, 7, 5);
    let xd = data(n * d, 4);
    let yd = data(m * d, 5);
    let x = Matrix::new(&xd, n, d).unwrap();
    let y = Matrix::new(&yd, m, d).unwrap();
    let mut ws = vec![0.0_f32; cross_distances_workspace_len(n, n, d)];
    for metric in METRICS {
        let mut whole = vec![0.0_f32; n * n];
        scalar::pairwise_distances(x, metric, &mut whole, &mut ws).unwrap();
        let mut block = vec![0.0_f32; 4 * n];
        scalar::pairwise_distances_rows(x, 3..7, metric, DistanceMode::Direct, &mut block, &mut ws)
            .unwrap();
        assert_eq!(block, whole[3 * n..7 * n]);
        let mut whole = vec![0.0_f32; n * m];
        scalar::cross_distances(x, y, metric, &mut whole, &mut ws).unwrap();
        let mut block = vec![0.0_f32; 2 * m];
        scalar::cross_distances_rows(x, y, 7..9, metric, DistanceMode::Gram, &mut block, &mut ws)
            .unwrap();
        assert_eq!(block, whole[7 * m..9 * m]);
    }
}

#[test]
fn gram_mode_rows_equal_the_default_kernels() {
    let (n, m, d) = (37, 21, 19);
    let xd = data(n * d, 6);
    let yd = data(m * d, 7);
    let x = Matrix::new(&xd, n, d).unwrap();
    let y = Matrix::new(&yd, m, d).unwrap();
    let mut ws = vec![f32::NAN; cross_distances_workspace_len(n, n, d)];
    for metric in METRICS {
        let (mut a, mut b) = (vec![0.0_f32; n * n], vec![1.0_f32; n * n]);
        pairwise_distances(x, metric, &mut a, &mut ws).unwrap();
        pairwise_distances_rows(x, 0..n, metric, DistanceMode::Gram, &mut b, &mut ws).unwrap();
        assert_eq!(a, b);
        let (mut a, mut b) = (vec![0.0_f32; n * m], vec![1.0_f32; n * m]);
        cross_distances(x, y, metric, &mut a, &mut ws).unwrap();
        cross_distances_rows(x, y, 0..n, metric, DistanceMode::Gram, &mut b, &mut ws).unwrap();
        assert_eq!(a, b);
    }
}

#[test]
fn threads_fill_disjoint_blocks_of_one_matrix() {
    let (n, d) = (203, 70);
    let xd = data(n * d, 8);
    let x = Matrix::new(&xd, n, d).unwrap();
    for metric in METRICS {
        for mode in MODES {
            let mut whole = vec![0.0_f32; n * n];
            let mut ws = vec![0.0_f32; pairwise_distances_workspace_len(n, d)];
            pairwise_distances_rows(x, 0..n, metric, mode, &mut whole, &mut ws).unwrap();
            let mut split = vec![f32::NAN; n * n];
            let cuts = [0, 50, 51, 140, n];
            std::thread::scope(|s| {
                let mut rest = split.as_mut_slice();
                for w in cuts.windows(2) {
                    let (block, tail) = rest.split_at_mut((w[1] - w[0]) * n);
                    rest = tail;
                    let rows = w[0]..w[1];
                    s.spawn(move || {
                        let mut ws =
                            vec![f32::NAN; pairwise_distances_rows_workspace_len(n, rows.len(), d)];
                        pairwise_distances_rows(x, rows, metric, mode, block, &mut ws).unwrap();
                    });
                }
            });
            assert_eq!(
                whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                split.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{metric:?} {mode:?}"
            );
        }
    }
}

#[test]
fn direct_mode_keeps_relative_accuracy_where_gram_cannot() {
    // Two points 1e-3 apart, 1e3 from the origin: the Gram form's error is bounded by
    // (2 d + 4) 2^-24 (|a|^2 + |b|^2), far above the squared distance itself.
    let d = 16;
    let a: Vec<f32> = (0..d).map(|k| 250.0 + k as f32).collect();
    let mut b = a.clone();
    b[3] += 1e-3;
    let xd: Vec<f32> = a.iter().chain(&b).copied().collect();
    let x = Matrix::new(&xd, 2, d).unwrap();
    let mut want = [0.0_f32; 4];
    let mut ws = vec![0.0_f32; pairwise_distances_workspace_len(2, d)];
    scalar::pairwise_distances(x, Metric::SquaredEuclidean, &mut want, &mut ws).unwrap();
    let mut direct = [0.0_f32; 4];
    pairwise_distances_rows(
        x,
        0..2,
        Metric::SquaredEuclidean,
        DistanceMode::Direct,
        &mut direct,
        &mut ws,
    )
    .unwrap();
    let rel = ((direct[1] - want[1]) / want[1]).abs();
    assert!(
        rel <= 18.0 * 2.0_f32.powi(-24),
        "direct relative error {rel}"
    );
    let mut gram = [0.0_f32; 4];
    pairwise_distances(x, Metric::SquaredEuclidean, &mut gram, &mut ws).unwrap();
    let n2: f32 = a.iter().chain(&b).map(|v| v * v).sum();
    let bound = (2.0 * d as f32 + 4.0) * 2.0_f32.powi(-24) * n2;
    assert!((gram[1] - want[1]).abs() <= bound * 1.01);
    assert_eq!(gram[0], 0.0);
}
