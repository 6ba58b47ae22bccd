//! Differential target: retrieval (`knn`, `retrieval_metrics`) against the scalar twins,
//! leave-one-out and against a gallery, on bounded structured inputs.
//!
//! - Always: no panic; fast and twin return the same `Ok`/`Err`, the first documented
//!   error for the arguments given (`k` out of range, non-finite embeddings for the
//!   metrics), outputs untouched on `Err`; garbage in outputs and workspace changes
//!   nothing.
//! - Any data (NaN and infinity included, which `knn` does not scan): `knn` returns
//!   exactly the ranking its docs define over the values of `cross_distances` (nearest
//!   first, NaN last, ties to the smaller index, Euclidean ranked by its square), and
//!   `retrieval_metrics` on finite data the textbook metrics of that ranking.
//! - Data in the documented range: the twin's neighbour distances agree rank by rank
//!   within the distance bound; on integer data under the Euclidean metrics both kernels
//!   return identical lists and identical metrics.

#![no_main]

mod common;

use std::cmp::Ordering;

use common::*;
use libfuzzer_sys::fuzz_target;
use triplet_kernels::{
    cross_distances, cross_distances_workspace_len, knn, knn_workspace_len, retrieval_metrics,
    retrieval_metrics_workspace_len, scalar, Error, Matrix, Metric, RetrievalMetrics,
};

/// The documented ranking key order: smaller distance first, NaN after every number,
/// equal distances (and NaN against NaN) by the smaller index.
fn rank(a: &(f32, usize), b: &(f32, usize)) -> Ordering {
    match (a.0.is_nan(), b.0.is_nan()) {
        (false, false) => a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)),
        (false, true) => Ordering::Less,
        (true, false) => Ordering::Greater,
        (true, true) => a.1.cmp(&b.1),
    }
}

/// Every query's references in the documented order, from `cross_distances` values:
/// `(distance as reported, index)`.
fn brute_force(
    queries: Matrix<'_>,
    refs: Matrix<'_>,
    loo: bool,
    metric: Metric,
) -> Vec<Vec<(f32, usize)>> {
    let (n, m) = (queries.rows(), refs.rows());
    let ranking = if metric == Metric::Euclidean {
        Metric::SquaredEuclidean
    } else {
        metric
    };
    let mut dist = vec![0.0_f32; n * m];
    let mut ws = vec![0.0_f32; cross_distances_workspace_len(n, m, queries.dim())];
    cross_distances(queries, refs, ranking, &mut dist, &mut ws).unwrap();
    (0..n)
        .map(|q| {
            let mut keys: Vec<(f32, usize)> = (0..m)
                .filter(|&j| !(loo && j == q))
                .map(|j| (dist[q * m + j], j))
                .collect();
            keys.sort_by(rank);
            if metric == Metric::Euclidean {
                for k in &mut keys {
                    k.0 = k.0.sqrt();
                }
            }
            keys
        })
        .collect()
}

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn run_knn(
    q: Matrix<'_>,
    refs: Option<Matrix<'_>>,
    metric: Metric,
    k: usize,
    len: usize,
    fast: bool,
    garbage: f32,
) -> (Result<(), Error>, Vec<u32>, Vec<f32>) {
    let m = refs.map_or(q.rows(), |y| y.rows());
    let mut idx = vec![0xdead_u32; len];
    let mut dist = vec![garbage; len];
    let mut ws = vec![garbage; knn_workspace_len(q.rows(), m, q.dim())];
    let r = if fast {
        knn(q, refs, metric, k, &mut idx, &mut dist, &mut ws)
    } else {
        scalar::knn(q, refs, metric, k, &mut idx, &mut dist, &mut ws)
    };
    if r.is_err() {
        assert!(idx.iter().all(|&i| i == 0xdead), "indices written on Err");
        assert!(
            dist.iter().all(|v| v.to_bits() == garbage.to_bits()),
            "written on Err"
        );
    }
    (r, idx, dist)
}

/// The metrics of the docs from full rankings (references in order, per query).
fn textbook(
    labels: &[u32],
    ref_labels: &[u32],
    loo: bool,
    ranking: &[Vec<(f32, usize)>],
    k: usize,
) -> ([f64; 4], usize) {
    let available = if loo {
        ref_labels.len() - 1
    } else {
        ref_labels.len()
    };
    let k = k.min(available);
    let (mut p1, mut recall, mut rp, mut map, mut evaluated) = (0.0, 0.0, 0.0, 0.0, 0_usize);
    for (q, &label) in labels.iter().enumerate() {
        let r = ref_labels.iter().filter(|&&l| l == label).count() - usize::from(loo);
        if r == 0 {
            continue;
        }
        let rel: Vec<bool> = ranking[q]
            .iter()
            .map(|&(_, j)| ref_labels[j] == label)
            .collect();
        p1 += f64::from(u8::from(rel[0]));
        recall += f64::from(u8::from(rel[..k].iter().any(|&b| b)));
        let (mut hits, mut ap) = (0_usize, 0.0);
        for (i, &b) in rel[..r].iter().enumerate() {
            if b {
                hits += 1;
                ap += hits as f64 / (i + 1) as f64;
            }
        }
        rp += hits as f64 / r as f64;
        map += ap / r as f64;
        evaluated += 1;
    }
    let e = evaluated.max(1) as f64;
    ([p1 / e, recall / e, rp / e, map / e], evaluated)
}

fn fields(m: &RetrievalMetrics) -> ([f64; 4], usize) {
    (
        [
            m.precision_at_1,
            m.recall_at_k,
            m.r_precision,
            m.mean_average_precision_at_r,
        ],
        m.evaluated,
    )
}

fuzz_target!(|data: &[u8]| {
    let mut g = Gen::new(data);
    let regime = g.regime();
    let n = g.size(1, 40);
    let d = g.size(1, 67);
    let xd = g.values(regime, n * d);
    let q = Matrix::new(&xd, n, d).unwrap();
    let gallery_rows = if g.bool() { Some(g.size(1, 40)) } else { None };
    let yd = gallery_rows.map_or_else(Vec::new, |m| g.values(regime, m * d));
    let y = gallery_rows.map(|m| Matrix::new(&yd, m, d).unwrap());
    let loo = y.is_none();
    let refs = y.unwrap_or(q);
    let m = refs.rows();
    let available = if loo { m - 1 } else { m };
    let metric = g.metric();
    let garbage = g.garbage();

    // knn.
    let k = match g.byte() % 8 {
        0 => 0,
        1 => available + 1 + g.range(0, 3),
        _ => g.range(1, available.max(1)),
    };
    let len = n * k;
    if dump() {
        eprintln!("knn: n {n} m {m} d {d} {metric:?} k {k} leave-one-out {loo}\nqueries {xd:?}\ngallery {yd:?}");
    }
    let (rf, idf, df) = run_knn(q, y, metric, k, len, true, garbage);
    let (rs, ids, ds) = run_knn(q, y, metric, k, len, false, garbage);
    let k_ok = k >= 1 && k <= available;
    let expected: Vec<Error> = if k_ok {
        vec![]
    } else {
        vec![Error::InvalidParameter { name: "k" }]
    };
    assert_eq!(rf, rs, "fast and twin disagree");
    assert_eq!(rf.err(), expected.first().copied());
    if rf.is_ok() {
        let (_, idf2, df2) = run_knn(q, y, metric, k, len, true, -garbage);
        assert_eq!(
            (&idf, bits(&df)),
            (&idf2, bits(&df2)),
            "garbage changed knn"
        );
        let want = brute_force(q, refs, loo, metric);
        for i in 0..n {
            for t in 0..k {
                let (wd, wj) = want[i][t];
                assert_eq!(idf[i * k + t] as usize, wj, "query {i} rank {t}");
                assert!(
                    same_f32(df[i * k + t], wd),
                    "query {i} rank {t}: {} vs {wd}",
                    df[i * k + t]
                );
            }
            // The twin's list: valid, distinct indices.
            let row = &ids[i * k..(i + 1) * k];
            let mut sorted = row.to_vec();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), k, "twin lists a reference twice");
            assert!(row
                .iter()
                .all(|&j| (j as usize) < m && !(loo && j as usize == i)));
        }
        let finite = xd.iter().chain(&yd).all(|v| v.is_finite());
        if finite && rows_in_range(&xd, d) && rows_in_range(&yd, d) {
            if regime == Regime::Int && metric != Metric::Cosine {
                assert_eq!(idf, ids, "integer data: identical indices");
                assert_eq!(bits(&df), bits(&ds), "integer data: identical distances");
            } else {
                for i in 0..n {
                    let a = q.row(i).unwrap();
                    let tol = (0..m)
                        .filter(|&j| !(loo && j == i))
                        .map(|j| dist_tol(metric, a, refs.row(j).unwrap()))
                        .fold(0.0, f64::max);
                    for t in 0..k {
                        let (a_, b_) = (df[i * k + t], ds[i * k + t]);
                        assert!(
                            (f64::from(a_) - f64::from(b_)).abs() <= 2.0 * tol,
                            "query {i} rank {t}: {a_} vs {b_}, tol {tol}"
                        );
                    }
                }
            }
        }
    }

    // retrieval_metrics.
    let classes = g.range(1, 6);
    let labels = g.labels(n, classes);
    let ref_labels = if loo {
        labels.clone()
    } else {
        g.labels(m, classes)
    };
    let reference = y.map(|y| (y, &ref_labels[..]));
    let kr = match g.byte() % 8 {
        0 => 0,
        1 => available + g.range(1, 5),
        _ => g.range(1, available.max(1)),
    };
    if dump() {
        eprintln!("retrieval_metrics: k {kr}\nlabels {labels:?}\nreference_labels {ref_labels:?}");
    }
    let mut expected = Vec::new();
    if kr == 0 {
        expected.push(Error::InvalidParameter { name: "k" });
    }
    if let Some(position) = first_non_finite(&xd) {
        expected.push(Error::NonFinite {
            buffer: "queries",
            position,
        });
    }
    if let Some(position) = first_non_finite(&yd) {
        expected.push(Error::NonFinite {
            buffer: "reference",
            position,
        });
    }
    let wlen = retrieval_metrics_workspace_len(n, m, d);
    let mut ws = vec![garbage; wlen];
    let mf = retrieval_metrics(q, &labels, reference, metric, kr, &mut ws);
    ws.fill(-garbage);
    let mf2 = retrieval_metrics(q, &labels, reference, metric, kr, &mut ws);
    let ms = scalar::retrieval_metrics(q, &labels, reference, metric, kr, &mut ws);
    match (&mf, &ms) {
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            assert_eq!(Some(a), expected.first(), "not the first documented error");
            return;
        }
        (Ok(_), Ok(_)) => assert!(expected.is_empty(), "Ok despite {expected:?}"),
        _ => panic!("fast {mf:?} vs twin {ms:?}"),
    }
    let (mf, mf2, ms) = (mf.unwrap(), mf2.unwrap(), ms.unwrap());
    let (ff, fe) = fields(&mf);
    let (sf, se) = fields(&ms);
    assert_eq!(
        fields(&mf2).0.map(f64::to_bits),
        ff.map(f64::to_bits),
        "garbage changed metrics"
    );
    assert_eq!(fe, se, "evaluated queries");
    assert!(ff.iter().chain(&sf).all(|v| (0.0..=1.0).contains(v)));
    let want = brute_force(q, refs, loo, metric);
    let (wf, we) = textbook(&labels, &ref_labels, loo, &want, kr);
    assert_eq!(fe, we);
    for (a, b) in ff.iter().zip(&wf) {
        assert!((a - b).abs() <= 1e-12, "{mf:?} vs textbook {wf:?}");
    }
    if regime == Regime::Int
        && metric != Metric::Cosine
        && rows_in_range(&xd, d)
        && rows_in_range(&yd, d)
    {
        assert_eq!(
            ff.map(f64::to_bits),
            sf.map(f64::to_bits),
            "integer data: identical metrics"
        );
    }
});
