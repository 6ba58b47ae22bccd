//! Retrieval kernels: fast vs scalar twin, against a textbook evaluation written here,
//! dirty buffers, ties, non-finite data and every error path.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::cmp::Ordering;

use proptest::prelude::*;
use triplet_kernels::{
    knn, knn_workspace_len, retrieval_metrics, retrieval_metrics_at,
    retrieval_metrics_workspace_len, scalar, Error, Matrix, Metric, RetrievalMetrics,
};

/// A workspace long enough for `knn` and for its twin.
fn knn_ws_len(queries: usize, references: usize, dim: usize) -> usize {
    knn_workspace_len(queries, references, dim)
        .max(scalar::knn_workspace_len(queries, references, dim))
}

/// A workspace long enough for `retrieval_metrics` and for its twin.
fn metrics_ws_len(queries: usize, references: usize, dim: usize) -> usize {
    retrieval_metrics_workspace_len(queries, references, dim).max(
        scalar::retrieval_metrics_workspace_len(queries, references, dim),
    )
}

type LenFn = fn(usize, usize, usize) -> usize;

const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];

/// The error of a `k` outside `1..=` the references a query can retrieve.
const K_ERR: Error = Error::InvalidParameter {
    name: "k",
    expected: "1 <= k <= references a query can retrieve",
};

/// One generated problem: queries, labels and, unless leave-one-out, a gallery.
#[derive(Clone, Debug)]
struct Problem {
    n: usize,
    d: usize,
    x: Vec<f32>,
    labels: Vec<u32>,
    /// `(m, data, labels)` of the gallery; `None` is leave-one-out.
    y: Option<(usize, Vec<f32>, Vec<u32>)>,
}

impl Problem {
    fn queries(&self) -> Matrix<'_> {
        Matrix::new(&self.x, self.n, self.d).unwrap()
    }

    fn gallery(&self) -> Option<Matrix<'_>> {
        self.y
            .as_ref()
            .map(|(m, data, _)| Matrix::new(data, *m, self.d).unwrap())
    }

    fn labelled(&self) -> Option<(Matrix<'_>, &[u32])> {
        self.gallery().zip(self.y.as_ref().map(|(_, _, l)| &l[..]))
    }

    fn m(&self) -> usize {
        self.y.as_ref().map_or(self.n, |(m, _, _)| *m)
    }

    /// References a query can retrieve.
    fn available(&self) -> usize {
        self.y.as_ref().map_or(self.n - 1, |(m, _, _)| *m)
    }

    fn ref_labels(&self) -> &[u32] {
        self.y.as_ref().map_or(&self.labels[..], |(_, _, l)| &l[..])
    }

    fn ref_row(&self, j: usize) -> &[f32] {
        let data = self.y.as_ref().map_or(&self.x[..], |(_, y, _)| &y[..]);
        &data[j * self.d..(j + 1) * self.d]
    }
}

/// Values: small integers in `-range..=range` when `range > 0` (distances exact in
/// `f32`), else uniform floats of magnitude `10^scale`, `scale` in -3..=3.
fn values(len: usize, range: i32, scale: i32) -> BoxedStrategy<Vec<f32>> {
    if range > 0 {
        proptest::collection::vec((-range..=range).prop_map(|v| v as f32), len).boxed()
    } else {
        let s = 10f32.powi(scale);
        proptest::collection::vec((-1.0f32..1.0).prop_map(move |v| v * s), len).boxed()
    }
}

/// Problems with up to `max_rows` rows on each side, dimensions 1..=67, 1..=5 classes.
fn problem(integer: bool, max_rows: usize) -> impl Strategy<Value = Problem> {
    let range = if integer {
        prop_oneof![Just(1), Just(2), Just(8)].boxed()
    } else {
        Just(0).boxed()
    };
    (
        1..=max_rows,
        1..=max_rows,
        1..=67_usize,
        any::<bool>(),
        1..=5_u32,
        range,
        -3..=3_i32,
    )
        .prop_flat_map(|(n, m, d, gallery, classes, range, scale)| {
            let y = if gallery {
                (
                    values(m * d, range, scale),
                    proptest::collection::vec(0..classes + 1, m),
                )
                    .prop_map(move |(data, l)| Some((m, data, l)))
                    .boxed()
            } else {
                Just(None).boxed()
            };
            (
                values(n * d, range, scale),
                proptest::collection::vec(0..classes, n),
                y,
            )
                .prop_map(move |(x, labels, y)| Problem { n, d, x, labels, y })
        })
}

/// Exact distance between two rows, as the scalar twin computes it.
fn dist64(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let sq: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let norm = |v: &[f32]| {
        v.iter()
            .map(|&x| (x as f64).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12)
    };
    match metric {
        Metric::SquaredEuclidean => sq,
        Metric::Euclidean => sq.sqrt(),
        Metric::Cosine => 1.0 - dot / (norm(a) * norm(b)),
        _ => unreachable!("a variant this test does not know"),
    }
}

/// Error allowed between a fast and an exact distance of this query (the distance
/// module's bound, scaled by the largest sum of absolute terms over the row).
fn tolerance(p: &Problem, metric: Metric, q: usize) -> f64 {
    let c = 4.0 * (p.d as f64 + 8.0) * f64::from(f32::EPSILON) / 2.0;
    let a = &p.x[q * p.d..(q + 1) * p.d];
    let s = (0..p.m())
        .map(|j| match metric {
            Metric::Cosine => 4.0,
            _ => dist64(metric, a, p.ref_row(j)),
        })
        .fold(0.0, f64::max);
    c * s + 1e-30
}

struct Lists {
    idx: Vec<u32>,
    dist: Vec<f32>,
}

fn run_knn(p: &Problem, metric: Metric, k: usize, fast: bool, fill: f32) -> Lists {
    let mut idx = vec![u32::MAX; p.n * k];
    let mut dist = vec![fill; p.n * k];
    let mut ws = vec![fill; knn_ws_len(p.n, p.m(), p.d)];
    let f = if fast { knn } else { scalar::knn };
    f(
        p.queries(),
        p.gallery(),
        metric,
        k,
        &mut idx,
        &mut dist,
        &mut ws,
    )
    .unwrap();
    Lists { idx, dist }
}

/// `k` is clamped to the references a query can retrieve, the largest `k` the kernels
/// accept (the textbook evaluation clamps it alike).
fn run_metrics(p: &Problem, metric: Metric, k: usize, fast: bool, fill: f32) -> RetrievalMetrics {
    let k = k.min(p.available());
    let mut ws = vec![fill; metrics_ws_len(p.n, p.m(), p.d)];
    let f = if fast {
        retrieval_metrics
    } else {
        scalar::retrieval_metrics
    };
    f(p.queries(), &p.labels, p.labelled(), metric, k, &mut ws).unwrap()
}

/// `retrieval_metrics_at` (fast or twin) with cut-offs `ks` (each below the references a
/// query can retrieve), and the recall at each.
fn run_metrics_at(
    p: &Problem,
    metric: Metric,
    ks: &[usize],
    fast: bool,
    fill: f32,
) -> (RetrievalMetrics, Vec<f64>) {
    let mut ws = vec![fill; metrics_ws_len(p.n, p.m(), p.d)];
    let mut recall = vec![f64::from(fill); ks.len()];
    let f = if fast {
        retrieval_metrics_at
    } else {
        scalar::retrieval_metrics_at
    };
    let m = f(
        p.queries(),
        &p.labels,
        p.labelled(),
        metric,
        ks,
        &mut recall,
        &mut ws,
    )
    .unwrap();
    (m, recall)
}

/// The metrics by their definition, from full rankings (every retrievable reference).
fn textbook(p: &Problem, ranking: &Lists, k: usize) -> RetrievalMetrics {
    let avail = p.available();
    let k = k.min(avail);
    let mut sums = [0.0_f64; 4];
    let mut evaluated = 0;
    for q in 0..p.n {
        let label = p.labels[q];
        let row = &ranking.idx[q * avail..(q + 1) * avail];
        let rel: Vec<bool> = row
            .iter()
            .map(|&j| p.ref_labels()[j as usize] == label)
            .collect();
        let r = rel.iter().filter(|&&b| b).count();
        if r == 0 {
            continue;
        }
        evaluated += 1;
        sums[0] += f64::from(u8::from(rel[0]));
        sums[1] += f64::from(u8::from(rel[..k].iter().any(|&b| b)));
        sums[2] += rel[..r].iter().filter(|&&b| b).count() as f64 / r as f64;
        let mut ap = 0.0;
        for i in 0..r {
            if rel[i] {
                let hits = rel[..=i].iter().filter(|&&b| b).count();
                ap += hits as f64 / (i + 1) as f64;
            }
        }
        sums[3] += ap / r as f64;
    }
    if evaluated == 0 {
        return run_zero();
    }
    let e = evaluated as f64;
    let mut out = run_zero();
    out.precision_at_1 = sums[0] / e;
    out.recall_at_k = sums[1] / e;
    out.r_precision = sums[2] / e;
    out.mean_average_precision_at_r = sums[3] / e;
    out.evaluated = evaluated;
    out
}

/// A zeroed `RetrievalMetrics` (the struct is non-exhaustive: obtained from an
/// all-lone evaluation).
fn run_zero() -> RetrievalMetrics {
    let x = Matrix::new(&[0.0], 1, 1).unwrap();
    let mut ws = [0.0_f32; retrieval_metrics_workspace_len(1, 1, 1)];
    retrieval_metrics(x, &[0], Some((x, &[1])), Metric::Euclidean, 1, &mut ws).unwrap()
}

fn assert_metrics_close(a: &RetrievalMetrics, b: &RetrievalMetrics, tol: f64) {
    assert_eq!(a.evaluated, b.evaluated, "{a:?} vs {b:?}");
    for (x, y) in [
        (a.precision_at_1, b.precision_at_1),
        (a.recall_at_k, b.recall_at_k),
        (a.r_precision, b.r_precision),
        (a.mean_average_precision_at_r, b.mean_average_precision_at_r),
    ] {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

/// Structural checks of one knn result: in range, distinct per query, never the query
/// itself leave-one-out, and each listed distance the true distance of its index.
fn check_lists(p: &Problem, metric: Metric, k: usize, l: &Lists) {
    for q in 0..p.n {
        let row = &l.idx[q * k..(q + 1) * k];
        let tol = tolerance(p, metric, q);
        for (t, &j) in row.iter().enumerate() {
            assert!((j as usize) < p.m());
            assert!(p.y.is_some() || j as usize != q, "query {q} lists itself");
            assert!(!row[..t].contains(&j), "duplicate neighbour {j}");
            let want = dist64(metric, &p.x[q * p.d..(q + 1) * p.d], p.ref_row(j as usize));
            let got = f64::from(l.dist[q * k + t]);
            assert!((got - want).abs() <= tol, "q {q} t {t}: {got} vs {want}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Integer data, Euclidean metrics: every distance is exact, so fast and scalar
    /// lists are identical, ties (many, with values in -1..=1) included.
    #[test]
    fn knn_integer_identical(p in problem(true, 33), k_frac in 0.0f64..1.0) {
        prop_assume!(p.available() >= 1);
        let k = 1 + ((p.available() - 1) as f64 * k_frac) as usize;
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
            let fast = run_knn(&p, metric, k, true, f32::NAN);
            let twin = run_knn(&p, metric, k, false, f32::NAN);
            prop_assert_eq!(&fast.idx, &twin.idx);
            prop_assert_eq!(&fast.dist, &twin.dist);
            check_lists(&p, metric, k, &fast);
        }
    }

    /// Any data, any metric: the fast lists are valid and each position's distance
    /// matches the twin's within the distance bound (neighbours within rounding error
    /// of each other may be listed in another order).
    #[test]
    fn knn_value_equivalent(p in problem(false, 33), k_frac in 0.0f64..1.0) {
        prop_assume!(p.available() >= 1);
        let k = 1 + ((p.available() - 1) as f64 * k_frac) as usize;
        for metric in METRICS {
            let fast = run_knn(&p, metric, k, true, f32::NAN);
            let twin = run_knn(&p, metric, k, false, f32::NAN);
            check_lists(&p, metric, k, &fast);
            check_lists(&p, metric, k, &twin);
            for q in 0..p.n {
                let tol = tolerance(&p, metric, q);
                for t in 0..k {
                    let (a, b) = (fast.dist[q * k + t], twin.dist[q * k + t]);
                    prop_assert!((f64::from(a) - f64::from(b)).abs() <= 2.0 * tol,
                        "q {} t {}: {} vs {}", q, t, a, b);
                }
            }
        }
    }

    /// Integer data with cosine: distances are not exact, but the lists are valid and
    /// value-equivalent to the twin's.
    #[test]
    fn knn_integer_cosine_equivalent(p in problem(true, 33)) {
        prop_assume!(p.available() >= 1);
        let k = p.available();
        let fast = run_knn(&p, Metric::Cosine, k, true, f32::NAN);
        let twin = run_knn(&p, Metric::Cosine, k, false, f32::NAN);
        check_lists(&p, Metric::Cosine, k, &fast);
        for q in 0..p.n {
            let tol = tolerance(&p, Metric::Cosine, q);
            for t in 0..k {
                let (a, b) = (fast.dist[q * k + t], twin.dist[q * k + t]);
                prop_assert!((f64::from(a) - f64::from(b)).abs() <= 2.0 * tol);
            }
        }
    }

    /// The fast metrics equal the textbook evaluation of the fast full ranking, and the
    /// twin's equal that of the twin's ranking, for any data and metric; on integer data
    /// with Euclidean metrics the fast and scalar metrics are identical.
    #[test]
    fn metrics_match_textbook(p in problem(true, 33), float in problem(false, 33), k in 1..40_usize) {
        for (p, exact) in [(&p, true), (&float, false)] {
            for metric in METRICS {
                if p.available() >= 1 {
                    let fast = run_metrics(p, metric, k, true, f32::NAN);
                    let twin = run_metrics(p, metric, k, false, f32::NAN);
                    if exact && metric != Metric::Cosine {
                        prop_assert_eq!(fast, twin);
                    }
                    let all = p.available();
                    let fast_rank = run_knn(p, metric, all, true, 0.0);
                    let twin_rank = run_knn(p, metric, all, false, 0.0);
                    assert_metrics_close(&fast, &textbook(p, &fast_rank, k), 1e-12);
                    assert_metrics_close(&twin, &textbook(p, &twin_rank, k), 1e-12);
                } else {
                    // Nothing to retrieve: no `k` is valid.
                    let mut ws = vec![0.0; metrics_ws_len(p.n, p.m(), p.d)];
                    for f in [retrieval_metrics, scalar::retrieval_metrics] {
                        let got = f(p.queries(), &p.labels, p.labelled(), metric, k, &mut ws);
                        prop_assert_eq!(got, Err(K_ERR));
                    }
                }
            }
        }
    }

    /// Recall at several K from one ranking: on integer data with Euclidean metrics the
    /// fast kernel and its twin are identical; for any data and metric each `recall_at[i]`
    /// and every other field equal, bit for bit, what `retrieval_metrics` returns with
    /// `k = ks[i]` (the `recall_at_k` returned being that of the largest K), and match
    /// the textbook evaluation of the full ranking.
    #[test]
    fn metrics_at_several_k(
        p in problem(true, 33),
        float in problem(false, 33),
        fracs in proptest::collection::vec(0.0f64..1.0, 1..5),
    ) {
        for (p, exact) in [(&p, true), (&float, false)] {
            if p.available() == 0 {
                continue;
            }
            let ks: Vec<usize> = fracs
                .iter()
                .map(|f| 1 + ((p.available() - 1) as f64 * f) as usize)
                .collect();
            let largest = *ks.iter().max().unwrap();
            for metric in METRICS {
                let (fast, fast_at) = run_metrics_at(p, metric, &ks, true, f32::NAN);
                let (twin, twin_at) = run_metrics_at(p, metric, &ks, false, f32::NAN);
                if exact && metric != Metric::Cosine {
                    prop_assert_eq!(fast, twin);
                    prop_assert_eq!(&fast_at, &twin_at);
                }
                for (at, one, fast_kernel) in [(&fast_at, &fast, true), (&twin_at, &twin, false)] {
                    for (&k, &r) in ks.iter().zip(at.iter()) {
                        let single = run_metrics(p, metric, k, fast_kernel, 0.0);
                        prop_assert_eq!(r.to_bits(), single.recall_at_k.to_bits());
                        prop_assert_eq!(single.precision_at_1.to_bits(), one.precision_at_1.to_bits());
                        prop_assert_eq!(single.r_precision.to_bits(), one.r_precision.to_bits());
                        prop_assert_eq!(
                            single.mean_average_precision_at_r.to_bits(),
                            one.mean_average_precision_at_r.to_bits()
                        );
                        prop_assert_eq!(single.evaluated, one.evaluated);
                        if k == largest {
                            prop_assert_eq!(single, *one);
                        }
                    }
                }
                let all = p.available();
                for (at, one, fast_kernel) in [(&fast_at, &fast, true), (&twin_at, &twin, false)] {
                    let ranking = run_knn(p, metric, all, fast_kernel, 0.0);
                    assert_metrics_close(one, &textbook(p, &ranking, largest), 1e-12);
                    for (&k, &r) in ks.iter().zip(at.iter()) {
                        let want = textbook(p, &ranking, k).recall_at_k;
                        prop_assert!((r - want).abs() <= 1e-12, "recall@{}: {} vs {}", k, r, want);
                    }
                }
            }
        }
    }

    /// Outputs and workspace pre-filled with NaN or with zeros give the same results.
    #[test]
    fn dirty_buffers(p in problem(false, 20), k in 1..40_usize) {
        prop_assume!(p.available() >= 1);
        let kk = k.min(p.available());
        for metric in METRICS {
            for fast in [true, false] {
                let a = run_knn(&p, metric, kk, fast, f32::NAN);
                let b = run_knn(&p, metric, kk, fast, 0.0);
                prop_assert_eq!(&a.idx, &b.idx);
                prop_assert_eq!(&a.dist, &b.dist);
                let a = run_metrics(&p, metric, k, fast, f32::NAN);
                let b = run_metrics(&p, metric, k, fast, f32::INFINITY);
                prop_assert_eq!(a, b);
            }
        }
    }

    /// knn does not scan its data: NaN ranks after every number, NaN against NaN by
    /// index, identically in the fast kernel and the twin.
    #[test]
    fn knn_nan_ranks_last(mut p in problem(true, 20), nans in proptest::collection::vec(any::<prop::sample::Index>(), 1..4)) {
        prop_assume!(p.available() >= 1);
        for i in &nans {
            let at = i.index(p.x.len());
            p.x[at] = f32::NAN;
            if let Some((_, y, _)) = p.y.as_mut() {
                let at = i.index(y.len());
                y[at] = f32::NAN;
            }
        }
        let k = p.available();
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
            let fast = run_knn(&p, metric, k, true, 0.0);
            let twin = run_knn(&p, metric, k, false, 0.0);
            prop_assert_eq!(&fast.idx, &twin.idx);
            for (a, b) in fast.dist.iter().zip(&twin.dist) {
                prop_assert!(a == b || (a.is_nan() && b.is_nan()));
            }
            for q in 0..p.n {
                let row = &fast.dist[q * k..(q + 1) * k];
                // Numbers first, then NaN.
                let first_nan = row.iter().position(|d| d.is_nan()).unwrap_or(k);
                prop_assert!(row[first_nan..].iter().all(|d| d.is_nan()));
                let nan_idx = &fast.idx[q * k + first_nan..(q + 1) * k];
                prop_assert!(nan_idx.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }

    /// The twin's ranking (a heap sort stopped after `k` places) is the first `k` of a
    /// full sort by (distance, index), NaN last: checked against the standard library's
    /// sort on exact integer distances, with ties and NaN rows, for several `k`.
    #[test]
    fn twin_knn_is_a_sorted_prefix(mut p in problem(true, 33), nan in proptest::option::of(any::<prop::sample::Index>())) {
        prop_assume!(p.available() >= 1);
        if let Some(i) = nan {
            let at = i.index(p.x.len());
            p.x[at] = f32::NAN;
        }
        let available = p.available();
        for k in [1, available.div_ceil(2), available] {
            let twin = run_knn(&p, Metric::SquaredEuclidean, k, false, f32::NAN);
            for q in 0..p.n {
                let a = &p.x[q * p.d..(q + 1) * p.d];
                let mut all: Vec<(f64, u32)> = (0..p.m())
                    .filter(|&j| p.y.is_some() || j != q)
                    .map(|j| (dist64(Metric::SquaredEuclidean, a, p.ref_row(j)), j as u32))
                    .collect();
                all.sort_by(|x, y| {
                    let by_distance = x.0.partial_cmp(&y.0).unwrap_or(Ordering::Equal);
                    (x.0.is_nan().cmp(&y.0.is_nan()))
                        .then(by_distance)
                        .then(x.1.cmp(&y.1))
                });
                let expected: Vec<u32> = all[..k].iter().map(|&(_, j)| j).collect();
                prop_assert_eq!(&twin.idx[q * k..(q + 1) * k], &expected[..]);
            }
        }
    }
}

/// Several query blocks and reference blocks, large classes (R above the reference
/// block), a single class (R = m - 1, one query per pool) and lone labels.
#[test]
fn large_shapes() {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |r: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % r
    };
    for (n, m, d, classes, gallery) in [
        (70, 700, 9, 3, true),
        (300, 300, 5, 1, false),
        (90, 600, 17, 40, true),
        (260, 260, 3, 7, false),
    ] {
        let x: Vec<f32> = (0..n * d).map(|_| next(7) as f32 - 3.0).collect();
        let labels: Vec<u32> = (0..n).map(|_| next(classes) as u32).collect();
        let y = gallery.then(|| {
            let data: Vec<f32> = (0..m * d).map(|_| next(7) as f32 - 3.0).collect();
            // One label absent from the queries, and query labels possibly absent here.
            let l: Vec<u32> = (0..m).map(|_| next(classes + 1) as u32).collect();
            (m, data, l)
        });
        let p = Problem { n, d, x, labels, y };
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
            let k = 5.min(p.available());
            let fast = run_knn(&p, metric, k, true, f32::NAN);
            let twin = run_knn(&p, metric, k, false, f32::NAN);
            assert_eq!(fast.idx, twin.idx);
            assert_eq!(fast.dist, twin.dist);
            for k in [1, 10, 1000] {
                let fast = run_metrics(&p, metric, k, true, f32::NAN);
                let twin = run_metrics(&p, metric, k, false, f32::NAN);
                assert_eq!(fast, twin);
                let all = run_knn(&p, metric, p.available(), false, 0.0);
                assert_metrics_close(&fast, &textbook(&p, &all, k), 1e-12);
            }
            // All three cut-offs from one ranking: the recalls of the calls above.
            let ks = [1, 10.min(p.available()), 1000.min(p.available())];
            let (at, at_twin) = (
                run_metrics_at(&p, metric, &ks, true, f32::NAN),
                run_metrics_at(&p, metric, &ks, false, f32::NAN),
            );
            assert_eq!(at, at_twin);
            for (&k, &r) in ks.iter().zip(&at.1) {
                assert_eq!(r, run_metrics(&p, metric, k, true, 0.0).recall_at_k);
            }
            assert_eq!(at.0, run_metrics(&p, metric, 1000, true, 0.0));
        }
        let fast = run_metrics(&p, Metric::Cosine, 3, true, f32::NAN);
        let all = run_knn(&p, Metric::Cosine, p.available(), true, 0.0);
        assert_metrics_close(&fast, &textbook(&p, &all, 3), 1e-12);
    }
}

#[test]
fn hand_computed_metrics() {
    // One query, label 1, against a line of references at distances 1..=6 with labels
    // [1, 2, 1, 2, 2, 1]: R = 3, relevant ranks 1, 3, 6.
    let q = Matrix::new(&[0.0], 1, 1).unwrap();
    let y = Matrix::new(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 6, 1).unwrap();
    let yl = [1, 2, 1, 2, 2, 1];
    let mut ws = vec![f32::NAN; metrics_ws_len(1, 6, 1)];
    for f in [retrieval_metrics, scalar::retrieval_metrics] {
        let m = f(q, &[1], Some((y, &yl)), Metric::Euclidean, 2, &mut ws).unwrap();
        assert_eq!(m.evaluated, 1);
        assert_eq!(m.precision_at_1, 1.0);
        assert_eq!(m.recall_at_k, 1.0);
        assert!((m.r_precision - 2.0 / 3.0).abs() < 1e-15);
        // (1/3) (1/1 + 2/3), the relevant item at rank 6 lies beyond R.
        assert!((m.mean_average_precision_at_r - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-15);
        // recall@2 of a query whose first positive is at rank 3 (label 2: ranks 2, 4, 5).
        let m = f(q, &[2], Some((y, &yl)), Metric::Euclidean, 1, &mut ws).unwrap();
        assert_eq!((m.precision_at_1, m.recall_at_k), (0.0, 0.0));
        let m = f(q, &[2], Some((y, &yl)), Metric::Euclidean, 2, &mut ws).unwrap();
        assert_eq!(m.recall_at_k, 1.0);
        // MAP@R for label 2: R = 3, relevant at ranks 2 (1/2), 4 and 5 beyond R.
        assert!((m.mean_average_precision_at_r - 0.5 / 3.0).abs() < 1e-15);
        assert!((m.r_precision - 1.0 / 3.0).abs() < 1e-15);
    }
}

#[test]
fn ties_go_to_the_smaller_index() {
    // References 0..4 at equal distance from the query except index 2 (nearer).
    let q = Matrix::new(&[0.0, 0.0], 1, 2).unwrap();
    let y = Matrix::new(&[1.0, 0.0, 0.0, 1.0, 0.5, 0.0, -1.0, 0.0, 0.0, -1.0], 5, 2).unwrap();
    let mut ws = vec![f32::NAN; knn_ws_len(1, 5, 2)];
    for f in [knn, scalar::knn] {
        let (mut idx, mut dist) = ([0_u32; 5], [0.0_f32; 5]);
        f(
            q,
            Some(y),
            Metric::Euclidean,
            5,
            &mut idx,
            &mut dist,
            &mut ws,
        )
        .unwrap();
        assert_eq!(idx, [2, 0, 1, 3, 4]);
        assert_eq!(dist, [0.5, 1.0, 1.0, 1.0, 1.0]);
    }
    // Leave-one-out with duplicates: a query's duplicate is listed (distance 0), the
    // query itself is not.
    let x = Matrix::new(&[1.0, 1.0, 1.0, 5.0], 4, 1).unwrap();
    let mut ws = vec![f32::NAN; knn_ws_len(4, 4, 1)];
    for f in [knn, scalar::knn] {
        let (mut idx, mut dist) = ([0_u32; 12], [0.0_f32; 12]);
        f(
            x,
            None,
            Metric::SquaredEuclidean,
            3,
            &mut idx,
            &mut dist,
            &mut ws,
        )
        .unwrap();
        assert_eq!(idx, [1, 2, 3, 0, 2, 3, 0, 1, 3, 0, 1, 2]);
        assert_eq!(dist[..3], [0.0, 0.0, 16.0]);
    }
}

#[test]
fn degenerate_queries() {
    // Every label is lone: nothing evaluated, every metric 0.
    let x = Matrix::new(&[0.0, 1.0, 2.0], 3, 1).unwrap();
    let mut ws = vec![f32::NAN; metrics_ws_len(3, 3, 1)];
    for f in [retrieval_metrics, scalar::retrieval_metrics] {
        let m = f(x, &[1, 2, 3], None, Metric::Cosine, 1, &mut ws).unwrap();
        assert_eq!(m, run_zero());
        assert_eq!(m.evaluated, 0);
        assert_eq!(
            [
                m.precision_at_1,
                m.recall_at_k,
                m.r_precision,
                m.mean_average_precision_at_r
            ],
            [0.0; 4]
        );
        // A single row retrieving from itself has no reference at all.
        let one = Matrix::new(&[4.0], 1, 1).unwrap();
        for k in [1, 5] {
            assert!(matches!(
                f(one, &[1], None, Metric::Euclidean, k, &mut ws),
                Err(Error::InvalidParameter { name: "k", .. })
            ));
        }
        // A gallery without the query labels: left out.
        let y = Matrix::new(&[0.0, 1.0], 2, 1).unwrap();
        let m = f(
            x,
            &[1, 1, 2],
            Some((y, &[2, 3])),
            Metric::Euclidean,
            1,
            &mut ws,
        )
        .unwrap();
        assert_eq!(m.evaluated, 1);
        // Row 2 (at 2.0, label 2): nearest y_1 (at 1.0, label 3), then y_0 (label 2).
        assert_eq!((m.precision_at_1, m.r_precision), (0.0, 0.0));
        let m = f(
            x,
            &[1, 1, 2],
            Some((y, &[2, 3])),
            Metric::Euclidean,
            2,
            &mut ws,
        )
        .unwrap();
        assert_eq!((m.recall_at_k, m.mean_average_precision_at_r), (1.0, 0.0));
    }
}

#[test]
fn k_beyond_the_references_is_refused() {
    let x = Matrix::new(&[0.0, 1.0, 5.0, 6.0], 4, 1).unwrap();
    let labels = [1, 2, 1, 2];
    let mut ws = vec![f32::NAN; metrics_ws_len(4, 4, 1)];
    for f in [retrieval_metrics, scalar::retrieval_metrics] {
        let at1 = f(x, &labels, None, Metric::Euclidean, 1, &mut ws).unwrap();
        assert_eq!(at1.recall_at_k, 0.0);
        assert_eq!(at1.recall_at_k, at1.precision_at_1);
        // As knn: at most the n - 1 references a query can retrieve leave-one-out.
        for k in [4, usize::MAX] {
            assert!(matches!(
                f(x, &labels, None, Metric::Euclidean, k, &mut ws),
                Err(Error::InvalidParameter { name: "k", .. })
            ));
        }
        let all = f(x, &labels, None, Metric::Euclidean, 3, &mut ws).unwrap();
        assert_eq!(all.recall_at_k, 1.0);
    }
}

type KnnFn = fn(
    Matrix<'_>,
    Option<Matrix<'_>>,
    Metric,
    usize,
    &mut [u32],
    &mut [f32],
    &mut [f32],
) -> Result<(), Error>;

type Labelled<'a> = Option<(Matrix<'a>, &'a [u32])>;

type MetricsFn = fn(
    Matrix<'_>,
    &[u32],
    Option<(Matrix<'_>, &[u32])>,
    Metric,
    usize,
    &mut [f32],
) -> Result<RetrievalMetrics, Error>;

#[test]
fn knn_errors_write_nothing() {
    let xd = [0.0_f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    let x = Matrix::new(&xd, 3, 2).unwrap();
    let y3 = Matrix::new(&xd, 2, 3).unwrap();
    let y = Matrix::new(&xd[..4], 2, 2).unwrap();
    for (f, len) in [
        (knn as KnnFn, knn_workspace_len as LenFn),
        (scalar::knn as KnnFn, scalar::knn_workspace_len as LenFn),
    ] {
        let full = len(3, 3, 2);
        let gal = len(3, 2, 2);
        let cases: [(Option<Matrix<'_>>, usize, usize, usize, usize, Error); 8] = [
            (
                Some(y3),
                1,
                3,
                3,
                gal,
                Error::DimensionMismatch { left: 2, right: 3 },
            ),
            (None, 0, 0, 0, full, K_ERR),
            (None, 3, 9, 9, full, K_ERR),
            (Some(y), 3, 9, 9, gal, K_ERR),
            (
                None,
                2,
                5,
                6,
                full,
                Error::LengthMismatch {
                    buffer: "indices",
                    expected: 6,
                    actual: 5,
                },
            ),
            (
                None,
                2,
                6,
                7,
                full,
                Error::LengthMismatch {
                    buffer: "distances",
                    expected: 6,
                    actual: 7,
                },
            ),
            (
                None,
                2,
                6,
                6,
                full - 1,
                Error::WorkspaceTooSmall {
                    required: full,
                    actual: full - 1,
                },
            ),
            (
                Some(y),
                2,
                6,
                6,
                gal - 1,
                Error::WorkspaceTooSmall {
                    required: gal,
                    actual: gal - 1,
                },
            ),
        ];
        for (reference, k, ni, nd, nw, want) in cases {
            let mut idx = vec![7_u32; ni];
            let mut dist = vec![7.0_f32; nd];
            let mut ws = vec![7.0_f32; nw];
            let got = f(
                x,
                reference,
                Metric::Euclidean,
                k,
                &mut idx,
                &mut dist,
                &mut ws,
            );
            assert_eq!(got, Err(want));
            assert!(idx.iter().all(|&v| v == 7) && dist.iter().all(|&v| v == 7.0));
            assert!(ws.iter().all(|&v| v == 7.0));
        }
        // A huge k is refused before any product is formed.
        let one = Matrix::new(&xd[..2], 1, 2).unwrap();
        let got = f(
            x,
            Some(one),
            Metric::Euclidean,
            usize::MAX,
            &mut [],
            &mut [],
            &mut [],
        );
        assert!(matches!(
            got,
            Err(Error::InvalidParameter { name: "k", .. })
        ));
    }
}

#[test]
fn knn_shape_overflow() {
    // n * k can overflow only when k <= m, so both sides must be long: 2^16 x 2^16
    // overflows a 32-bit usize.
    let yd = vec![0.0_f32; 1 << 16];
    let y = Matrix::new(&yd, 1 << 16, 1).unwrap();
    let xd = vec![0.0_f32; 1 << 16];
    let x = Matrix::new(&xd, 1 << 16, 1).unwrap();
    // On 64-bit targets the product fits: the output length check must see 2^32.
    if usize::BITS == 32 {
        let got = knn(
            x,
            Some(y),
            Metric::Euclidean,
            1 << 16,
            &mut [],
            &mut [],
            &mut [],
        );
        assert!(matches!(got, Err(Error::ShapeOverflow { .. })));
    } else {
        let got = knn(
            x,
            Some(y),
            Metric::Euclidean,
            1 << 16,
            &mut [],
            &mut [],
            &mut [],
        );
        assert_eq!(
            got,
            Err(Error::LengthMismatch {
                buffer: "indices",
                expected: 1 << 32,
                actual: 0
            })
        );
    }
}

#[test]
fn metrics_errors() {
    let xd = [0.0_f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    let x = Matrix::new(&xd, 3, 2).unwrap();
    let y3 = Matrix::new(&xd, 2, 3).unwrap();
    let y = Matrix::new(&xd[..4], 2, 2).unwrap();
    for (f, len) in [
        (
            retrieval_metrics as MetricsFn,
            retrieval_metrics_workspace_len as LenFn,
        ),
        (
            scalar::retrieval_metrics as MetricsFn,
            scalar::retrieval_metrics_workspace_len as LenFn,
        ),
    ] {
        let full = len(3, 3, 2);
        let gal = len(3, 2, 2);
        let l3: &[u32] = &[1, 1, 2];
        let l2: &[u32] = &[1, 2];
        let cases: [(&[u32], Labelled<'_>, usize, usize, Error); 9] = [
            (
                l3,
                Some((y3, l2)),
                1,
                gal,
                Error::DimensionMismatch { left: 2, right: 3 },
            ),
            (
                l2,
                None,
                1,
                full,
                Error::LengthMismatch {
                    buffer: "labels",
                    expected: 3,
                    actual: 2,
                },
            ),
            (
                l3,
                Some((y, l3)),
                1,
                gal,
                Error::LengthMismatch {
                    buffer: "reference_labels",
                    expected: 2,
                    actual: 3,
                },
            ),
            (l3, None, 0, full, K_ERR),
            (l3, Some((y, l2)), 0, gal, K_ERR),
            (l3, None, 3, full, K_ERR),
            (l3, Some((y, l2)), 3, gal, K_ERR),
            (
                l3,
                None,
                1,
                full - 1,
                Error::WorkspaceTooSmall {
                    required: full,
                    actual: full - 1,
                },
            ),
            (
                l3,
                Some((y, l2)),
                1,
                gal - 1,
                Error::WorkspaceTooSmall {
                    required: gal,
                    actual: gal - 1,
                },
            ),
        ];
        for (labels, reference, k, nw, want) in cases {
            let mut ws = vec![7.0_f32; nw];
            assert_eq!(
                f(x, labels, reference, Metric::Cosine, k, &mut ws),
                Err(want)
            );
            assert!(ws.iter().all(|&v| v == 7.0));
        }
        // Non-finite data: the queries are scanned first, then the gallery.
        let mut ws = vec![0.0_f32; gal.max(full)];
        let bad = [0.0_f32, 1.0, f32::INFINITY, 3.0, f32::NAN, 5.0];
        let xb = Matrix::new(&bad, 3, 2).unwrap();
        let yb = Matrix::new(&bad[2..], 2, 2).unwrap();
        assert_eq!(
            f(xb, l3, None, Metric::Euclidean, 1, &mut ws),
            Err(Error::NonFinite {
                buffer: "queries",
                row: 1,
                col: 0,
            })
        );
        assert_eq!(
            f(xb, l3, Some((y, l2)), Metric::Euclidean, 1, &mut ws),
            Err(Error::NonFinite {
                buffer: "queries",
                row: 1,
                col: 0,
            })
        );
        assert_eq!(
            f(x, l3, Some((yb, l2)), Metric::Euclidean, 1, &mut ws),
            Err(Error::NonFinite {
                buffer: "reference",
                row: 0,
                col: 0,
            })
        );
    }
}

#[test]
fn workspace_lengths_are_linear_and_saturate() {
    // Never n x m: doubling both sides at most doubles the workspace (plus a constant).
    for (n, m) in [(10, 10), (1000, 8000), (4096, 1 << 20)] {
        assert!(knn_workspace_len(2 * n, 2 * m, 64) <= 2 * knn_workspace_len(n, m, 64) + 8192);
        assert!(
            retrieval_metrics_workspace_len(2 * n, 2 * m, 64)
                <= 2 * retrieval_metrics_workspace_len(n, m, 64) + 8192
        );
    }
    assert_eq!(knn_workspace_len(usize::MAX, usize::MAX, 1), usize::MAX);
    assert_eq!(
        retrieval_metrics_workspace_len(usize::MAX, 3, 1),
        usize::MAX
    );
    // Usable as a stack array length.
    let ws = [0.0_f32; knn_workspace_len(2, 3, 4)];
    assert_eq!(
        ws.len(),
        // Norms 3 + 2, heap sizes 2, one 2 x 3 tile, its f32 packing, and the bf16
        // filter's packing of the queries and of the references (16 rows padded x
        // (2 words + 1 term) each).
        3 + 2 * 2 + 2 * 3 + triplet_kernels::cross_distances_rows_workspace_len(2, 3, 4) + 2 * 48
    );
    let ws = [0.0_f32; scalar::knn_workspace_len(2, 3, 4)];
    assert_eq!(ws.len(), 4 * 3 + 1);
    // The metrics add a pool of 2 m (distance, index) slots and m sorted labels.
    let ws = [0.0_f32; retrieval_metrics_workspace_len(2, 3, 4)];
    assert_eq!(ws.len(), knn_workspace_len(2, 3, 4) + 5 * 3);
}

/// `knn`'s documented bound, `(d / 8 + 10) 2^-24 S` with `S` the sum of the absolute terms
/// of the distance: `1 + sum |a_i b_i| / (|a| |b|)` for cosine, the distance itself for
/// the Euclidean one, plus an absolute allowance for terms below `f32`'s normal range.
/// The docs once gave `S` without the `1` of `1 - cos`, and the squared distance for the
/// Euclidean metric, with no underflow term: in each case below no `f32` at all lies
/// within that of the exact distance, so no kernel could meet it.
#[test]
fn knn_distance_bound_terms() {
    let u = 2f64.powi(-24);
    let fast = |metric: Metric, a: &[f32], b: &[f32]| {
        let d = a.len();
        let (q, y) = (Matrix::new(a, 1, d).unwrap(), Matrix::new(b, 1, d).unwrap());
        let (mut idx, mut dist) = ([0_u32], [0.0_f32]);
        let mut ws = vec![f32::NAN; knn_workspace_len(1, 1, d)];
        knn(q, Some(y), metric, 1, &mut idx, &mut dist, &mut ws).unwrap();
        f64::from(dist[0])
    };
    // The error of the nearest `f32` to `x`: the least any kernel can do.
    let least = |x: f64| (f64::from(x as f32) - x).abs();
    let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();

    // Cosine, nearly orthogonal rows.
    let (a, b) = ([1.0_f32, 0.001], [0.001_f32, 1.0]);
    let (a64, b64) = (f64s(&a), f64s(&b));
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let abs_terms: f64 = a64
        .iter()
        .zip(&b64)
        .map(|(x, y)| (x * y).abs())
        .sum::<f64>()
        / (norm(&a64) * norm(&b64));
    let exact = dist64(Metric::Cosine, &a, &b);
    let c = (2.0 / 8.0 + 10.0) * u;
    assert!(least(exact) > c * abs_terms, "old cosine wording met");
    let got = fast(Metric::Cosine, &a, &b);
    assert!(
        (got - exact).abs() <= c * (1.0 + abs_terms),
        "{got} vs {exact}"
    );

    // Euclidean, nearly coincident rows.
    let (a, b) = ([0.0_f32, 0.0], [1e-4_f32, 1e-4]);
    let exact = dist64(Metric::Euclidean, &a, &b);
    assert!(
        least(exact) > c * exact * exact,
        "old Euclidean wording met"
    );
    let got = fast(Metric::Euclidean, &a, &b);
    assert!((got - exact).abs() <= c * exact, "{got} vs {exact}");

    // Squared Euclidean, a difference whose square underflows.
    let (a, b) = ([1e-30_f32], [0.0_f32]);
    let exact = dist64(Metric::SquaredEuclidean, &a, &b);
    let c = (1.0 / 8.0 + 10.0) * u;
    assert!(least(exact) > c * exact, "old underflow wording met");
    let got = fast(Metric::SquaredEuclidean, &a, &b);
    assert!(
        (got - exact).abs() <= c * exact + (1.0 + 8.0) * 1.2e-38,
        "{got} vs {exact}"
    );
}

type AtFn = fn(
    Matrix<'_>,
    &[u32],
    Option<(Matrix<'_>, &[u32])>,
    Metric,
    &[usize],
    &mut [f64],
    &mut [f32],
) -> Result<RetrievalMetrics, Error>;

/// One error case of `retrieval_metrics_at`: labels, reference, `ks`, `recall_at` and
/// workspace lengths, the error.
type AtCase<'a> = (&'a [u32], Labelled<'a>, &'a [usize], usize, usize, Error);

#[test]
fn hand_computed_recall_at_several_k() {
    // The line of `hand_computed_metrics`: labels [1, 2, 1, 2, 2, 1] at distances 1..=6.
    // Query 0 (label 1) has its first positive at rank 1, query 1 (label 2, at the same
    // place) at rank 2; query 2 (label 3) has none and is left out.
    let q = Matrix::new(&[0.0, 0.0, 0.0], 3, 1).unwrap();
    let y = Matrix::new(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 6, 1).unwrap();
    let yl = [1, 2, 1, 2, 2, 1];
    let mut ws = vec![f32::NAN; metrics_ws_len(3, 6, 1)];
    for f in [retrieval_metrics_at as AtFn, scalar::retrieval_metrics_at] {
        // Unsorted cut-offs, one repeated.
        let ks = [2, 1, 6, 2];
        let mut recall = [f64::NAN; 4];
        let m = f(
            q,
            &[1, 2, 3],
            Some((y, &yl)),
            Metric::Euclidean,
            &ks,
            &mut recall,
            &mut ws,
        )
        .unwrap();
        assert_eq!(recall, [1.0, 0.5, 1.0, 1.0]);
        assert_eq!(m.evaluated, 2);
        assert_eq!((m.precision_at_1, m.recall_at_k), (0.5, 1.0));
        // R-precision: 2/3 and 1/3; MAP@R: (1 + 2/3) / 3 and (1/2) / 3.
        assert!((m.r_precision - 0.5).abs() < 1e-15);
        let map = ((1.0 + 2.0 / 3.0) / 3.0 + 0.5 / 3.0) / 2.0;
        assert!((m.mean_average_precision_at_r - map).abs() < 1e-15);
        // Nothing evaluated: every recall 0.
        let mut recall = [f64::NAN; 2];
        let m = f(
            q,
            &[3, 3, 3],
            Some((y, &yl)),
            Metric::Euclidean,
            &[1, 3],
            &mut recall,
            &mut ws,
        )
        .unwrap();
        assert_eq!((m.evaluated, recall), (0, [0.0, 0.0]));
    }
}

#[test]
fn metrics_at_errors_write_nothing() {
    let xd = [0.0_f32, 1.0, 2.0, 3.0, 4.0, 5.0];
    let x = Matrix::new(&xd, 3, 2).unwrap();
    let y = Matrix::new(&xd[..4], 2, 2).unwrap();
    let l3: &[u32] = &[1, 1, 2];
    let l2: &[u32] = &[1, 2];
    let ks_err = Error::InvalidParameter {
        name: "ks",
        expected: "non-empty, each 1 <= K <= references a query can retrieve",
    };
    for (f, len) in [
        (
            retrieval_metrics_at as AtFn,
            retrieval_metrics_workspace_len as LenFn,
        ),
        (
            scalar::retrieval_metrics_at as AtFn,
            scalar::retrieval_metrics_workspace_len as LenFn,
        ),
    ] {
        let full = len(3, 3, 2);
        let gal = len(3, 2, 2);
        let cases: [AtCase<'_>; 10] = [
            (
                l2,
                None,
                &[1],
                1,
                full,
                Error::LengthMismatch {
                    buffer: "labels",
                    expected: 3,
                    actual: 2,
                },
            ),
            (l3, None, &[], 0, full, ks_err),
            (l3, None, &[1, 0], 2, full, ks_err),
            (l3, None, &[3], 1, full, ks_err),
            (l3, Some((y, l2)), &[1, 3], 2, gal, ks_err),
            (l3, None, &[usize::MAX], 1, full, ks_err),
            // The cut-offs are checked before the output's length.
            (l3, None, &[0], 2, full, ks_err),
            (
                l3,
                None,
                &[1, 2],
                1,
                full,
                Error::LengthMismatch {
                    buffer: "recall_at",
                    expected: 2,
                    actual: 1,
                },
            ),
            (
                l3,
                Some((y, l2)),
                &[2],
                2,
                gal,
                Error::LengthMismatch {
                    buffer: "recall_at",
                    expected: 1,
                    actual: 2,
                },
            ),
            (
                l3,
                Some((y, l2)),
                &[2, 1],
                2,
                gal - 1,
                Error::WorkspaceTooSmall {
                    required: gal,
                    actual: gal - 1,
                },
            ),
        ];
        for (labels, reference, ks, nr, nw, want) in cases {
            let mut ws = vec![7.0_f32; nw];
            let mut recall = vec![7.0_f64; nr];
            assert_eq!(
                f(
                    x,
                    labels,
                    reference,
                    Metric::Cosine,
                    ks,
                    &mut recall,
                    &mut ws
                ),
                Err(want)
            );
            assert!(ws.iter().all(|&v| v == 7.0));
            assert!(recall.iter().all(|&v| v == 7.0));
        }
        // Non-finite data: reported after the cut-offs, nothing written.
        let bad = [0.0_f32, f32::NAN, 2.0, 3.0, 4.0, 5.0];
        let xb = Matrix::new(&bad, 3, 2).unwrap();
        let mut ws = vec![7.0_f32; full];
        let mut recall = [7.0_f64; 2];
        assert_eq!(
            f(
                xb,
                l3,
                None,
                Metric::Euclidean,
                &[1, 2],
                &mut recall,
                &mut ws
            ),
            Err(Error::NonFinite {
                buffer: "queries",
                row: 0,
                col: 1,
            })
        );
        assert_eq!(recall, [7.0; 2]);
    }
}
