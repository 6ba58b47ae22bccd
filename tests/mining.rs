//! Online mining: fast kernels against their scalar twins and against the definitions,
//! ties, degenerate batches and every error path.

use proptest::prelude::*;
use triplet_kernels::{
    hardest_pairs, hardest_pairs_workspace_len, mine_triplets, mine_triplets_count,
    mine_triplets_workspace_len, scalar, Error, Matrix, Metric, Mining, Triplet, NO_INDEX,
};

const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];
const MININGS: [Mining; 3] = [Mining::All, Mining::BatchHard, Mining::SemiHard];
const EPS: f64 = f32::EPSILON as f64;

use testkit::strategies::{int_value, sparse_batch, value};

/// A batch: rows, dim, data and labels drawn from `classes` ids (sparse ids, not 0..C).
fn batch(
    rows: impl Strategy<Value = usize>,
    dim: impl Strategy<Value = usize>,
    v: impl Strategy<Value = f32> + Clone,
) -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<u32>)> {
    sparse_batch(rows, dim, v, 1009, 7)
}

/// `d(x_i, x_j)` in f64, the definition.
fn dist64(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let sq: f64 = a
        .iter()
        .zip(b)
        .map(|(&u, &v)| (f64::from(u) - f64::from(v)).powi(2))
        .sum();
    match metric {
        Metric::SquaredEuclidean => sq,
        Metric::Euclidean => sq.sqrt(),
        Metric::Cosine => {
            let na = a
                .iter()
                .map(|&u| f64::from(u).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            let nb = b
                .iter()
                .map(|&u| f64::from(u).powi(2))
                .sum::<f64>()
                .sqrt()
                .max(1e-12);
            let dot: f64 = a
                .iter()
                .zip(b)
                .map(|(&u, &v)| f64::from(u) * f64::from(v))
                .sum();
            1.0 - dot / (na * nb)
        }
        _ => unreachable!("a variant this test does not know"),
    }
}

/// The distance bound of the distance kernels, with their tests' safety factor of 4.
fn dist_tol(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let s = match metric {
        Metric::SquaredEuclidean => dist64(Metric::SquaredEuclidean, a, b),
        Metric::Euclidean => dist64(Metric::Euclidean, a, b),
        Metric::Cosine => 2.0,
        _ => unreachable!("a variant this test does not know"),
    };
    4.0 * (a.len() as f64 + 8.0) * EPS * s + 1e-30
}

struct Run {
    pos: Vec<u32>,
    neg: Vec<u32>,
    triplets: [Vec<Triplet>; 3],
}

fn run(x: Matrix<'_>, labels: &[u32], metric: Metric, fast: bool) -> Run {
    let n = x.rows();
    let mut ws = vec![f32::NAN; mine_triplets_workspace_len(n, x.dim())];
    let mut pos = vec![7_u32; n];
    let mut neg = vec![7_u32; n];
    if fast {
        hardest_pairs(x, labels, metric, &mut pos, &mut neg, &mut ws).unwrap();
    } else {
        scalar::hardest_pairs(x, labels, metric, &mut pos, &mut neg, &mut ws).unwrap();
    }
    let triplets = MININGS.map(|m| {
        let count = mine_triplets_count(labels, m).unwrap();
        assert_eq!(count, scalar::mine_triplets_count(labels, m).unwrap());
        // One extra slot that must stay untouched.
        let sentinel = Triplet::new(1, 2, 3);
        let mut out = vec![sentinel; count + 1];
        ws.fill(f32::NAN);
        let k = if fast {
            mine_triplets(x, labels, metric, m, &mut out, &mut ws)
        } else {
            scalar::mine_triplets(x, labels, metric, m, &mut out, &mut ws)
        }
        .unwrap();
        assert_eq!(k, count, "{m:?}: wrote {k}, count {count}");
        assert_eq!(out[count], sentinel);
        out.truncate(count);
        out
    });
    Run { pos, neg, triplets }
}

/// Checks one run against the definitions of the module docs, with the distances of the
/// definition: every selection is optimal up to `slack` (0 for exact inputs), and exact
/// ties go to the smallest index when `slack == 0`.
fn check_definitions(x: Matrix<'_>, labels: &[u32], metric: Metric, r: &Run, slack: bool) {
    let n = x.rows();
    let d = |i: usize, j: usize| dist64(metric, x.row(i).unwrap(), x.row(j).unwrap());
    let tol = |i: usize, j: usize| {
        if slack {
            2.0 * dist_tol(metric, x.row(i).unwrap(), x.row(j).unwrap())
        } else {
            0.0
        }
    };
    let positives = |a: usize| (0..n).filter(move |&j| j != a && labels[j] == labels[a]);
    let negatives = |a: usize| (0..n).filter(move |&j| labels[j] != labels[a]);
    let mut hard = Vec::new();
    let mut semi = Vec::new();
    let mut all = Vec::new();
    for a in 0..n {
        // Batch-hard, per anchor.
        let p = r.pos[a];
        if positives(a).next().is_none() {
            assert_eq!(p, NO_INDEX);
        } else {
            let p = p as usize;
            assert!(p != a && labels[p] == labels[a]);
            for j in positives(a) {
                let (dj, dp) = (d(a, j), d(a, p));
                assert!(dj <= dp + tol(a, j) + tol(a, p), "farthest positive");
                if !slack && j < p {
                    assert!(dj < dp, "tie to the smallest index");
                }
            }
        }
        let q = r.neg[a];
        if negatives(a).next().is_none() {
            assert_eq!(q, NO_INDEX);
        } else {
            let q = q as usize;
            assert!(labels[q] != labels[a]);
            for j in negatives(a) {
                let (dj, dq) = (d(a, j), d(a, q));
                assert!(dj + tol(a, j) + tol(a, q) >= dq, "nearest negative");
                if !slack && j < q {
                    assert!(dj > dq, "tie to the smallest index");
                }
            }
        }
        if r.pos[a] != NO_INDEX && r.neg[a] != NO_INDEX {
            hard.push(Triplet::new(a as u32, r.pos[a], r.neg[a]));
        }
        for p in positives(a) {
            for q in negatives(a) {
                all.push(Triplet::new(a as u32, p as u32, q as u32));
            }
        }
        if negatives(a).next().is_some() {
            for p in positives(a) {
                semi.push((a, p));
            }
        }
    }
    assert_eq!(r.triplets[0], all);
    assert_eq!(r.triplets[1], hard);
    // Semi-hard: the (a, p) pairs are fixed; the negatives follow the rule on exact inputs.
    assert_eq!(
        r.triplets[2]
            .iter()
            .map(|t| (t.anchor as usize, t.positive as usize))
            .collect::<Vec<_>>(),
        semi
    );
    if !slack {
        for t in &r.triplets[2] {
            let (a, p, q) = (t.anchor as usize, t.positive as usize, t.negative as usize);
            let dap = d(a, p);
            let above: Vec<usize> = negatives(a).filter(|&j| d(a, j) > dap).collect();
            let want = if above.is_empty() {
                negatives(a).fold(None, |best: Option<usize>, j| match best {
                    Some(b) if d(a, j) <= d(a, b) => Some(b),
                    _ => Some(j),
                })
            } else {
                above
                    .iter()
                    .copied()
                    .fold(None, |best: Option<usize>, j| match best {
                        Some(b) if d(a, j) >= d(a, b) => Some(b),
                        _ => Some(j),
                    })
            };
            assert_eq!(Some(q), want, "semi-hard negative of ({a}, {p})");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Integer data: squared distances are exact, so fast and scalar mining must return
    /// identical indices, ties included, and both must follow the definitions exactly.
    #[test]
    fn integers_identical((n, d, data, labels) in batch(1usize..=33, 1usize..=67, int_value())) {
        let x = Matrix::new(&data, n, d).unwrap();
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
            let f = run(x, &labels, metric, true);
            let s = run(x, &labels, metric, false);
            prop_assert_eq!(&f.pos, &s.pos);
            prop_assert_eq!(&f.neg, &s.neg);
            prop_assert_eq!(&f.triplets, &s.triplets);
            check_definitions(x, &labels, metric, &f, false);
        }
    }

    /// Few distinct values in few dimensions: ties everywhere.
    #[test]
    fn ties_go_to_the_smallest_index(
        (n, d, data, labels) in batch(1usize..=20, 1usize..=3, (-1_i8..=1).prop_map(f32::from)),
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
            let f = run(x, &labels, metric, true);
            let s = run(x, &labels, metric, false);
            prop_assert_eq!(&f.pos, &s.pos);
            prop_assert_eq!(&f.neg, &s.neg);
            prop_assert_eq!(&f.triplets, &s.triplets);
            check_definitions(x, &labels, metric, &f, false);
        }
    }

    /// General floats, every metric: where fast and scalar choose differently, the chosen
    /// distances agree within the distance error bound.
    #[test]
    fn floats_equivalent((n, d, data, labels) in batch(1usize..=33, 1usize..=67, value())) {
        let x = Matrix::new(&data, n, d).unwrap();
        for metric in METRICS {
            let f = run(x, &labels, metric, true);
            let s = run(x, &labels, metric, false);
            check_definitions(x, &labels, metric, &f, true);
            check_definitions(x, &labels, metric, &s, false);
            let dd = |i: usize, j: u32| dist64(metric, x.row(i).unwrap(), x.row(j as usize).unwrap());
            let tt = |i: usize, j: u32| dist_tol(metric, x.row(i).unwrap(), x.row(j as usize).unwrap());
            for a in 0..n {
                for (fi, si) in [(f.pos[a], s.pos[a]), (f.neg[a], s.neg[a])] {
                    prop_assert_eq!(fi == NO_INDEX, si == NO_INDEX);
                    if fi != si {
                        prop_assert!((dd(a, fi) - dd(a, si)).abs() <= 2.0 * (tt(a, fi) + tt(a, si)));
                    }
                }
            }
        }
    }
}

#[test]
fn one_large_case() {
    // P x K batch, labels i / K, xorshift data.
    let (n, d, k) = (130, 97, 5);
    let mut state = 0x9e37_79b9_u32;
    let data: Vec<f32> = (0..n * d)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 17) as f32 - 8.0
        })
        .collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| i / k).collect();
    let x = Matrix::new(&data, n, d).unwrap();
    for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
        let f = run(x, &labels, metric, true);
        let s = run(x, &labels, metric, false);
        assert_eq!(f.pos, s.pos);
        assert_eq!(f.neg, s.neg);
        assert_eq!(f.triplets, s.triplets);
        check_definitions(x, &labels, metric, &f, false);
    }
}

/// xorshift32 stream.
fn xorshift(seed: u32) -> impl FnMut() -> u32 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    }
}

/// More rows than one tile (256) and one block of rows (256) of the fused kernels: the
/// sweep crosses tiles and the row-wise minings cross blocks. Few distinct values in few
/// dimensions make ties everywhere, also between candidates of different tiles: the
/// smallest index must win exactly as in the twins.
#[test]
fn tiles_and_blocks_break_ties_like_the_twins() {
    let mut rng = xorshift(0x2545_f491);
    for (n, d, classes) in [(300, 2, 30), (263, 1, 20), (260, 3, 130)] {
        let data: Vec<f32> = (0..n * d).map(|_| (rng() % 3) as f32 - 1.0).collect();
        let labels: Vec<u32> = (0..n).map(|_| rng() % classes * 7 + 1).collect();
        let x = Matrix::new(&data, n, d).unwrap();
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
            let f = run(x, &labels, metric, true);
            let s = run(x, &labels, metric, false);
            assert_eq!(f.pos, s.pos, "{n} x {d}, {metric:?}");
            assert_eq!(f.neg, s.neg, "{n} x {d}, {metric:?}");
            assert_eq!(f.triplets, s.triplets, "{n} x {d}, {metric:?}");
            check_definitions(x, &labels, metric, &f, false);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Integers far from the origin: the Gram form `|a|^2 + |b|^2 - 2 <a, b>` rounds
    /// every squared distance here (the norms exceed 2^24), while the differences are
    /// small integers. The accuracy fix-up must recompute them directly, so the choices
    /// are exactly the twins'.
    #[test]
    fn far_from_the_origin_identical(
        (n, d, data, labels) in batch(1usize..=33, 1usize..=67, int_value()),
        offset in prop::sample::select(vec![1.0e4_f32, -3.0e4, 2.5e5]),
    ) {
        let data: Vec<f32> = data.iter().map(|v| v + offset).collect();
        let x = Matrix::new(&data, n, d).unwrap();
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
            let f = run(x, &labels, metric, true);
            let s = run(x, &labels, metric, false);
            prop_assert_eq!(&f.pos, &s.pos);
            prop_assert_eq!(&f.neg, &s.neg);
            prop_assert_eq!(&f.triplets, &s.triplets);
            check_definitions(x, &labels, metric, &f, false);
        }
    }
}

/// Tight clusters far from the origin and from each other, one class each, over more than
/// one tile: only the pairs inside a cluster are small against their norms, so the
/// fix-up recomputes them one by one (not the whole tile). Every choice must be optimal
/// within the distance bound *relative to the distance*, which the Gram form alone
/// misses by orders of magnitude for the pairs inside a cluster.
#[test]
fn clustered_far_points_keep_relative_accuracy() {
    let mut rng = xorshift(0x9e37_79b9);
    let (clusters, size, d) = (27, 10, 8);
    let n = clusters * size;
    let mut data = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    for c in 0..clusters {
        let center: Vec<f32> = (0..d)
            .map(|_| (rng() % 2001) as f32 * 10.0 - 10_000.0)
            .collect();
        for _ in 0..size {
            data.extend(
                center
                    .iter()
                    .map(|v| v + (rng() % 1001) as f32 * 1e-3 - 0.5),
            );
            labels.push(c as u32 * 3 + 5);
        }
    }
    let x = Matrix::new(&data, n, d).unwrap();
    for metric in METRICS {
        let f = run(x, &labels, metric, true);
        check_definitions(x, &labels, metric, &f, true);
    }
}

#[test]
fn counts() {
    let labels = [4, 4, 9, 9, 9, 2];
    // pos: 1 1 2 2 2 0; neg: 4 4 3 3 3 5.
    assert_eq!(
        mine_triplets_count(&labels, Mining::All),
        Ok(4 + 4 + 6 + 6 + 6)
    );
    assert_eq!(mine_triplets_count(&labels, Mining::BatchHard), Ok(5));
    assert_eq!(
        mine_triplets_count(&labels, Mining::SemiHard),
        Ok(1 + 1 + 2 + 2 + 2)
    );
    for m in MININGS {
        assert_eq!(mine_triplets_count(&[], m), Ok(0));
        assert_eq!(mine_triplets_count(&[3], m), Ok(0));
        assert_eq!(mine_triplets_count(&[3, 3, 3], m), Ok(0));
        assert_eq!(mine_triplets_count(&[1, 2, 3], m), Ok(0));
        assert_eq!(scalar::mine_triplets_count(&[1, 2, 3], m), Ok(0));
    }
}

#[test]
fn degenerate_batches() {
    let metric = Metric::Euclidean;
    // A single row: no positive, no negative.
    let x = Matrix::new(&[1.0, 2.0], 1, 2).unwrap();
    let r = run(x, &[0], metric, true);
    assert_eq!((r.pos, r.neg), (vec![NO_INDEX], vec![NO_INDEX]));
    assert!(r.triplets.iter().all(Vec::is_empty));
    // One class: positives but no negative.
    let data = [0.0, 1.0, 3.0];
    let x = Matrix::new(&data, 3, 1).unwrap();
    let r = run(x, &[5, 5, 5], metric, true);
    assert_eq!(r.pos, vec![2, 2, 0]);
    assert_eq!(r.neg, vec![NO_INDEX; 3]);
    assert!(r.triplets.iter().all(Vec::is_empty));
    // All labels distinct: negatives but no positive.
    let r = run(x, &[1, 2, 3], metric, true);
    assert_eq!(r.pos, vec![NO_INDEX; 3]);
    assert_eq!(r.neg, vec![1, 0, 1]);
    assert!(r.triplets.iter().all(Vec::is_empty));
    // Duplicate rows: every distance 0, every choice a tie.
    let data = [1.5_f32; 8];
    let x = Matrix::new(&data, 4, 2).unwrap();
    for metric in METRICS {
        let labels = [0, 1, 0, 1];
        let r = run(x, &labels, metric, true);
        assert_eq!(r.pos, vec![2, 3, 0, 1]);
        assert_eq!(r.neg, vec![1, 0, 1, 0]);
        // Semi-hard: no negative is farther than 0, so the farthest (a tie: smallest index).
        assert_eq!(
            r.triplets[2],
            vec![
                Triplet::new(0, 2, 1),
                Triplet::new(1, 3, 0),
                Triplet::new(2, 0, 1),
                Triplet::new(3, 1, 0)
            ]
        );
        let s = run(x, &labels, metric, false);
        assert_eq!(r.triplets, s.triplets);
    }
}

#[test]
fn semi_hard_rule() {
    // Anchor 0 at 0, positive at 2; negatives at 1 (inside), 3 and 5 (outside), -4.
    let data = [0.0, 2.0, 1.0, 3.0, 5.0, -4.0];
    let x = Matrix::new(&data, 6, 1).unwrap();
    let labels = [0, 0, 1, 1, 1, 1];
    for fast in [true, false] {
        let r = run(x, &labels, Metric::Euclidean, fast);
        // (0, 1): d = 2; negatives beyond 2: 3 (3), 5 (5), -4 (4): nearest is row 3.
        assert_eq!(r.triplets[2][0], Triplet::new(0, 1, 3));
        // (1, 0): d = 2; from 2: 1 (1), 3 (1), 5 (3), -4 (6): beyond 2 the nearest is row 4.
        assert_eq!(r.triplets[2][1], Triplet::new(1, 0, 4));
        // Anchor 2 (x = 1) with positive 3 (d = 2): negatives 0 (1), 2 (1): none beyond,
        // the farthest is a tie between rows 0 and 1 at distance 1: row 0.
        assert_eq!(r.triplets[2][2], Triplet::new(2, 3, 0));
    }
}

#[test]
fn every_error_path() {
    let data = [0.0_f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    let x = Matrix::new(&data, 3, 2).unwrap();
    let labels = [0, 0, 1];
    let mut ws = [0.0_f32; mine_triplets_workspace_len(3, 2)];
    // The documented requirement (per-row arrays, one tile or block and its packing).
    let need = mine_triplets_workspace_len(3, 2);
    let need_hp = hardest_pairs_workspace_len(3, 2);
    let mut pos = [7_u32; 3];
    let mut neg = [7_u32; 3];
    let mut out = [Triplet::new(9, 9, 9); 2];
    type Hp =
        fn(Matrix<'_>, &[u32], Metric, &mut [u32], &mut [u32], &mut [f32]) -> Result<(), Error>;
    type Mt =
        fn(Matrix<'_>, &[u32], Metric, Mining, &mut [Triplet], &mut [f32]) -> Result<usize, Error>;
    for (hp, mt) in [
        (hardest_pairs as Hp, mine_triplets as Mt),
        (scalar::hardest_pairs, scalar::mine_triplets),
    ] {
        let m = Metric::Euclidean;
        assert_eq!(
            hp(x, &labels[..2], m, &mut pos, &mut neg, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "labels",
                expected: 3,
                actual: 2
            })
        );
        assert_eq!(
            hp(x, &labels, m, &mut pos[..2], &mut neg, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "positives",
                expected: 3,
                actual: 2
            })
        );
        assert_eq!(
            hp(x, &labels, m, &mut pos, &mut neg[..1], &mut ws),
            Err(Error::LengthMismatch {
                buffer: "negatives",
                expected: 3,
                actual: 1
            })
        );
        assert_eq!(
            hp(x, &labels, m, &mut pos, &mut neg, &mut ws[..need_hp - 1]),
            Err(Error::WorkspaceTooSmall {
                required: need_hp,
                actual: need_hp - 1
            })
        );
        assert_eq!(
            mt(x, &labels, m, Mining::All, &mut out, &mut ws[..need - 1]),
            Err(Error::WorkspaceTooSmall {
                required: need,
                actual: need - 1
            })
        );
        assert_eq!(
            mt(x, &[0, 1], m, Mining::All, &mut out, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "labels",
                expected: 3,
                actual: 2
            })
        );
        // Two triplets for All and SemiHard, one for BatchHard... fewer slots fail.
        assert_eq!(
            mt(x, &labels, m, Mining::All, &mut out[..1], &mut ws),
            Err(Error::LengthMismatch {
                buffer: "out",
                expected: 2,
                actual: 1
            })
        );
        assert_eq!(
            mt(x, &labels, m, Mining::BatchHard, &mut out[..0], &mut ws),
            Err(Error::LengthMismatch {
                buffer: "out",
                expected: 2,
                actual: 0
            })
        );
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut d = data;
            d[3] = bad;
            let xb = Matrix::new(&d, 3, 2).unwrap();
            assert_eq!(
                hp(xb, &labels, m, &mut pos, &mut neg, &mut ws),
                Err(Error::NonFinite {
                    buffer: "x",
                    row: 1,
                    col: 1,
                })
            );
            assert_eq!(
                mt(xb, &labels, m, Mining::SemiHard, &mut out, &mut ws),
                Err(Error::NonFinite {
                    buffer: "x",
                    row: 1,
                    col: 1,
                })
            );
        }
    }
    // Nothing was written by any failing call.
    assert_eq!(pos, [7; 3]);
    assert_eq!(neg, [7; 3]);
    assert_eq!(out, [Triplet::new(9, 9, 9); 2]);
    // The workspace query saturates instead of overflowing.
    assert_eq!(mine_triplets_workspace_len(usize::MAX, 3), usize::MAX);
}

#[test]
fn triplet_layout() {
    assert_eq!(core::mem::size_of::<Triplet>(), 12);
    assert_eq!(core::mem::align_of::<Triplet>(), 4);
    assert_eq!(Triplet::default(), Triplet::new(0, 0, 0));
    assert_eq!(Mining::default(), Mining::BatchHard);
    assert_eq!(
        triplet_kernels::BatchParams::new().mining,
        Mining::default()
    );
}

#[test]
fn flat_index_buffers_view_as_tuples() {
    use triplet_kernels::{Error, Quadruplet, Triplet};
    let flat = [0_u32, 1, 2, 3, 4, 5, 6];
    assert_eq!(
        Triplet::from_flat(&flat),
        Err(Error::LengthMismatch {
            buffer: "triplets",
            expected: 6,
            actual: 7
        })
    );
    let t = Triplet::from_flat(&flat[..6]).unwrap();
    assert_eq!(t, [Triplet::new(0, 1, 2), Triplet::new(3, 4, 5)]);
    assert_eq!(Triplet::as_flat(t), &flat[..6]);
    assert_eq!(
        Quadruplet::from_flat(&flat),
        Err(Error::LengthMismatch {
            buffer: "quadruplets",
            expected: 4,
            actual: 7
        })
    );
    assert_eq!(
        Quadruplet::from_flat(&flat[..4]).unwrap(),
        [Quadruplet::new(0, 1, 2, 3)]
    );
}
