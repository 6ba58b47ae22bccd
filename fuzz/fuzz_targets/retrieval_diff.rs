//! Differential target: retrieval (`knn`, `retrieval_metrics`) against the scalar twins,
//! leave-one-out and against a gallery, on bounded structured inputs.
//!
//! `knn` computes each distance pair by pair in the direct form; nothing here depends on
//! the last bits of another kernel's arithmetic. Checked:
//!
//! - Always: no panic; fast and twin return the same `Ok`/`Err`, the first documented
//!   error for the arguments given (`k` out of range, non-finite embeddings for the
//!   metrics), outputs untouched on `Err`; garbage in outputs and workspace changes
//!   nothing. A gallery prepared once (`prepare_gallery`, and `prepare_gallery_filtered`
//!   with its bf16 filter copy, for all queries and for the first alone) gives `knn`'s
//!   lists bit for bit.
//! - Any data (NaN and infinity included, which `knn` does not scan), every list of the
//!   fast kernel and of the twin, for the `k` asked and for `k` = every retrievable
//!   reference: indices distinct, below `m`, never the query itself leave-one-out. The
//!   fast lists are sorted by the documented total order of their own distances
//!   (smaller first, NaN after every number, equal distances and NaN against NaN by the
//!   smaller index); `Metric::Euclidean` ranks by the square, so its lists are
//!   `Metric::SquaredEuclidean`'s, indices identical and distances their `f32` square
//!   roots bit for bit. The twin's distances (rounded from `f64`) never decrease.
//! - NaN rules of the docs: a query row holding NaN lists the first `k` retrievable
//!   indices, every distance NaN; a reference row holding NaN gets a NaN distance from
//!   every finite query and ranks after every reference whose distance to that query is
//!   a number by construction (a finite row; for cosine, rows in the documented range).
//! - Pairs of rows in the documented range (finite, squared norm below `f32::MAX / 8`):
//!   every listed distance is within the documented bound `B` of the exact `f64`
//!   distance of its (query, reference) pair; and nothing clearly nearer was missed: an
//!   unlisted reference `j` has `exact(j) + B(j) >= exact(t) - B(t)` for every listed
//!   `t`, and the last listed distance is at most `exact(j) + B(j)` (so it is a number).
//!   The twin's lists obey the same. Rank by rank, fast and twin distances agree within
//!   the distance bound; on integer data under the Euclidean metrics both return
//!   identical lists and distances.
//! - `retrieval_metrics` ("exactly as knn ranks"): on finite data, the textbook metrics
//!   of `knn`'s own full ranking (`k` = every retrievable reference), within `1e-12`;
//!   identical to the twin's on integer data under the Euclidean metrics.
//! - `retrieval_metrics_at` (recall at several K from one ranking): fast and twin return
//!   the same `Ok`/`Err`, the first documented error (`ks` empty or out of range,
//!   `recall_at` of another length, non-finite embeddings), nothing written on `Err`; on
//!   `Ok`, every field and each `recall_at[i]` equal, bit for bit, those of
//!   `retrieval_metrics` with `k = ks[i]` (`recall_at_k` that of the largest K), for the
//!   fast kernel and for the twin.

#![no_main]

mod common;

use std::cmp::Ordering;

use common::*;
use libfuzzer_sys::fuzz_target;
use triplet_kernels::{
    knn, knn_workspace_len, retrieval_metrics, retrieval_metrics_at,
    retrieval_metrics_workspace_len, scalar, Error, Matrix, Metric, RetrievalMetrics,
};

/// The documented domain of `retrieval_metrics_at`'s `ks`.
const DOMAIN_KS: &str = "non-empty, each 1 <= K <= references a query can retrieve";

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

fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn has_nan(row: &[f32]) -> bool {
    row.iter().any(|v| v.is_nan())
}

fn all_finite(row: &[f32]) -> bool {
    row.iter().all(|v| v.is_finite())
}

/// Finite, squared norm below `f32::MAX / 8`: the range of the documented bounds.
fn in_range(row: &[f32]) -> bool {
    all_finite(row) && rows_in_range(row, row.len())
}

/// The bound `knn` documents for one pair, `(d / 8 + 10) 2^-24 S` with `S` the sum of the
/// absolute terms (the distance itself for Euclidean, `1 + sum |a_i b_i| / (|a| |b|)` for
/// cosine), plus the direct form's underflow allowance.
fn knn_bound(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let d = a.len() as f64;
    (d / 8.0 + 10.0) * (EPS / 2.0) * dist_scale(metric, a, b) + underflow_allowance(metric, a.len())
}

/// One retrieval problem: the queries, the reference set (the queries leave-one-out).
#[derive(Clone, Copy)]
struct Problem<'a> {
    q: Matrix<'a>,
    refs: Matrix<'a>,
    loo: bool,
    metric: Metric,
}

impl Problem<'_> {
    /// The references query `i` can retrieve, in index order.
    fn retrievable(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let loo = self.loo;
        (0..self.refs.rows()).filter(move |&j| !(loo && j == i))
    }

    fn reference(&self, j: usize) -> &[f32] {
        self.refs.row(j).unwrap()
    }
}

/// The documented contract of one list result (`k` per query) of the fast kernel
/// (`fast`) or of its twin, checked against the problem alone.
fn check_lists(p: &Problem<'_>, k: usize, idx: &[u32], dist: &[f32], fast: bool) {
    let who = if fast { "knn" } else { "twin" };
    let (n, m, metric) = (p.q.rows(), p.refs.rows(), p.metric);
    assert_eq!((idx.len(), dist.len()), (n * k, n * k));
    for i in 0..n {
        let a = p.q.row(i).unwrap();
        let ids: Vec<usize> = idx[i * k..(i + 1) * k]
            .iter()
            .map(|&j| j as usize)
            .collect();
        let ds = &dist[i * k..(i + 1) * k];

        // Structure.
        let mut listed = vec![false; m];
        for &j in &ids {
            assert!(j < m, "{who}: query {i} lists {j} of {m}");
            assert!(!(p.loo && j == i), "{who}: query {i} lists itself");
            assert!(!listed[j], "{who}: query {i} lists {j} twice");
            listed[j] = true;
        }

        // Order of the reported distances. The fast kernel ranks exactly by them, ties
        // and NaN by index (Euclidean ranks by the square: checked on the squared run);
        // the twin ranks in f64, so its rounded distances only never decrease.
        for t in 1..k {
            let (x, y) = ((ds[t - 1], ids[t - 1]), (ds[t], ids[t]));
            if fast && metric != Metric::Euclidean {
                assert_eq!(
                    rank(&x, &y),
                    Ordering::Less,
                    "{who}: query {i} ranks {t} and {}: {x:?} before {y:?}",
                    t - 1
                );
            } else {
                assert!(
                    !(x.0.is_nan() && !y.0.is_nan()) && !(x.0 > y.0),
                    "{who}: query {i} ranks {t} and {}: {x:?} before {y:?}",
                    t - 1
                );
            }
        }

        // NaN rules.
        if has_nan(a) {
            let first: Vec<usize> = p.retrievable(i).take(k).collect();
            assert_eq!(ids, first, "{who}: NaN query {i}: not the first indices");
            assert!(
                ds.iter().all(|v| v.is_nan()),
                "{who}: NaN query {i}: distances {ds:?}"
            );
            continue;
        }
        if all_finite(a) {
            // References whose distance to this query is a number by construction: any
            // finite row in f64 and for the Euclidean metrics (an overflow gives +inf);
            // for the fast cosine, rows in range (norms of huge rows overflow).
            let numeric = |b: &[f32]| {
                if fast && metric == Metric::Cosine {
                    in_range(a) && in_range(b)
                } else {
                    all_finite(b)
                }
            };
            let numeric_refs = p
                .retrievable(i)
                .filter(|&j| numeric(p.reference(j)))
                .count();
            for (t, (&j, &dj)) in ids.iter().zip(ds).enumerate() {
                if has_nan(p.reference(j)) {
                    assert!(
                        dj.is_nan(),
                        "{who}: query {i}: reference {j} holds NaN, distance {dj}"
                    );
                    let before = ids[..t]
                        .iter()
                        .filter(|&&l| numeric(p.reference(l)))
                        .count();
                    assert_eq!(
                        before, numeric_refs,
                        "{who}: query {i}: NaN reference {j} at rank {t}, before a number"
                    );
                }
            }
        }

        // Bounds against the exact distances, and completeness.
        if in_range(a) {
            // The largest `exact(t) - B(t)` over the listed references in range.
            let mut lower = f64::NEG_INFINITY;
            for (t, (&j, &dj)) in ids.iter().zip(ds).enumerate() {
                let b = p.reference(j);
                if in_range(b) {
                    let (e, bd) = (dist64(metric, a, b), knn_bound(metric, a, b));
                    assert!(
                        (f64::from(dj) - e).abs() <= bd,
                        "{who}: query {i} rank {t} reference {j}: {dj} vs exact {e}, bound {bd}"
                    );
                    lower = lower.max(e - bd);
                }
            }
            let last = f64::from(ds[k - 1]);
            for j in p.retrievable(i).filter(|&j| !listed[j]) {
                let b = p.reference(j);
                if !in_range(b) {
                    continue;
                }
                let upper = dist64(metric, a, b) + knn_bound(metric, a, b);
                assert!(
                    upper >= lower,
                    "{who}: query {i}: reference {j} left out, exact + bound {upper} below \
                     a listed exact - bound {lower}"
                );
                assert!(
                    last <= upper,
                    "{who}: query {i}: reference {j} left out, exact + bound {upper} below \
                     the last listed distance {last}"
                );
            }
        }
    }
}

fn run_knn(
    q: Matrix<'_>,
    refs: Option<Matrix<'_>>,
    metric: Metric,
    k: usize,
    fast: bool,
    garbage: f32,
) -> (Result<(), Error>, Vec<u32>, Vec<f32>) {
    let len = q.rows() * k;
    let m = refs.map_or(q.rows(), |y| y.rows());
    let mut idx = vec![0xdead_u32; len];
    let mut dist = vec![garbage; len];
    let wlen = if fast {
        knn_workspace_len(q.rows(), m, q.dim())
    } else {
        scalar::knn_workspace_len(q.rows(), m, q.dim())
    };
    let mut ws = vec![garbage; wlen];
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
    ranking: &[Vec<usize>],
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
        let rel: Vec<bool> = ranking[q].iter().map(|&j| ref_labels[j] == label).collect();
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

/// `retrieval_metrics_at`, fast and twin, against their contract and against
/// `retrieval_metrics` called once per K.
#[allow(clippy::too_many_arguments)]
fn check_metrics_at(
    g: &mut Gen<'_>,
    q: Matrix<'_>,
    labels: &[u32],
    reference: Option<(Matrix<'_>, &[u32])>,
    metric: Metric,
    available: usize,
    finite_errors: &[Error],
    garbage: f32,
) {
    let count = g.range(0, 4);
    let ks: Vec<usize> = (0..count)
        .map(|_| match g.byte() % 16 {
            0 => 0,
            1 => available + g.range(1, 3),
            _ => g.range(1, available.max(1)),
        })
        .collect();
    let out_len = if g.byte() % 8 == 0 {
        g.range(0, 5)
    } else {
        ks.len()
    };
    if dump() {
        eprintln!("retrieval_metrics_at: ks {ks:?} recall_at {out_len}");
    }
    let mut expected = Vec::new();
    if ks.is_empty() || ks.iter().any(|&k| k == 0 || k > available) {
        expected.push(invalid("ks", DOMAIN_KS));
    }
    if out_len != ks.len() {
        expected.push(Error::LengthMismatch {
            buffer: "recall_at",
            expected: ks.len(),
            actual: out_len,
        });
    }
    expected.extend_from_slice(finite_errors);
    let (n, d) = (q.rows(), q.dim());
    let m = reference.map_or(n, |(y, _)| y.rows());
    let wlen = retrieval_metrics_workspace_len(n, m, d)
        .max(scalar::retrieval_metrics_workspace_len(n, m, d));
    let mut results = Vec::new();
    for fast in [true, false] {
        let mut ws = vec![garbage; wlen];
        let mut recall = vec![f64::from(garbage); out_len];
        let f = if fast {
            retrieval_metrics_at
        } else {
            scalar::retrieval_metrics_at
        };
        let got = f(q, labels, reference, metric, &ks, &mut recall, &mut ws);
        match got {
            Err(e) => {
                assert_eq!(Some(&e), expected.first(), "not the first documented error");
                assert!(
                    recall
                        .iter()
                        .all(|v| v.to_bits() == f64::from(garbage).to_bits()),
                    "recall_at written on Err"
                );
                assert!(
                    ws.iter().all(|v| v.to_bits() == garbage.to_bits()),
                    "workspace written on Err"
                );
            }
            Ok(all) => {
                assert!(expected.is_empty(), "Ok despite {expected:?}");
                let largest = *ks.iter().max().unwrap();
                for (&k, &r) in ks.iter().zip(&recall) {
                    let one = if fast {
                        retrieval_metrics(q, labels, reference, metric, k, &mut ws)
                    } else {
                        scalar::retrieval_metrics(q, labels, reference, metric, k, &mut ws)
                    }
                    .unwrap();
                    assert_eq!(r.to_bits(), one.recall_at_k.to_bits(), "recall@{k}");
                    let (a, b) = (fields(&all), fields(&one));
                    assert_eq!(a.1, b.1, "evaluated");
                    for i in [0, 2, 3] {
                        assert_eq!(a.0[i].to_bits(), b.0[i].to_bits(), "field {i} at K {k}");
                    }
                    if k == largest {
                        assert_eq!(a.0[1].to_bits(), b.0[1].to_bits(), "recall_at_k");
                    }
                }
            }
        }
        results.push(got.map(|_| ()));
    }
    assert_eq!(results[0], results[1], "fast and twin disagree");
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
    let p = Problem {
        q,
        refs,
        loo,
        metric,
    };

    // knn.
    let k = match g.byte() % 8 {
        0 => 0,
        1 => available + 1 + g.range(0, 3),
        _ => g.range(1, available.max(1)),
    };
    if dump() {
        eprintln!("knn: n {n} m {m} d {d} {metric:?} k {k} leave-one-out {loo}\nqueries {xd:?}\ngallery {yd:?}");
    }
    let (rf, idf, df) = run_knn(q, y, metric, k, true, garbage);
    let (rs, ids, ds) = run_knn(q, y, metric, k, false, garbage);
    let k_ok = k >= 1 && k <= available;
    let expected: Vec<Error> = if k_ok {
        vec![]
    } else {
        vec![invalid("k", DOMAIN_K)]
    };
    assert_eq!(rf, rs, "fast and twin disagree");
    assert_eq!(rf.err(), expected.first().copied());
    // Every retrievable reference, in knn's order: the metrics' reference ranking.
    let full = (available >= 1).then(|| {
        let (r, idx, dist) = run_knn(q, y, metric, available, true, garbage);
        assert_eq!(r, Ok(()), "k = every retrievable reference");
        check_lists(&p, available, &idx, &dist, true);
        (idx, dist)
    });
    if available >= 1 {
        let (r, idx, dist) = run_knn(q, y, metric, available, false, garbage);
        assert_eq!(r, Ok(()));
        check_lists(&p, available, &idx, &dist, false);
    }
    if rf.is_ok() {
        let (_, idf2, df2) = run_knn(q, y, metric, k, true, -garbage);
        assert_eq!(
            (&idf, bits(&df)),
            (&idf2, bits(&df2)),
            "garbage changed knn"
        );
        check_lists(&p, k, &idf, &df, true);
        check_lists(&p, k, &ids, &ds, false);
        // A prepared gallery searches exactly as knn does (finite galleries only: others
        // are refused at enrolment).
        if let Some(y) = y {
            let mut norms = vec![0.0_f32; triplet_kernels::gallery_norms_len(m)];
            match triplet_kernels::prepare_gallery(y, metric.into(), &mut norms) {
                Ok(gal) => {
                    let mut idx = vec![u32::MAX; n * k];
                    let mut dist = vec![f32::NAN; n * k];
                    let len = triplet_kernels::knn_gallery_workspace_len(n, m, d);
                    let mut ws = vec![garbage; len];
                    triplet_kernels::knn_gallery(q, &gal, k, &mut idx, &mut dist, &mut ws).unwrap();
                    assert_eq!((&idx, bits(&dist)), (&idf, bits(&df)), "knn_gallery != knn");
                    // And with its bf16 filter copy (single queries take the row kernel).
                    let mut norms2 = vec![0.0_f32; m];
                    let mut filter = vec![garbage; triplet_kernels::gallery_filter_len(m, d)];
                    let gf = triplet_kernels::prepare_gallery_filtered(
                        y,
                        metric.into(),
                        &mut norms2,
                        &mut filter,
                    )
                    .unwrap();
                    ws.fill(garbage);
                    triplet_kernels::knn_gallery(q, &gf, k, &mut idx, &mut dist, &mut ws).unwrap();
                    assert_eq!(
                        (&idx, bits(&dist)),
                        (&idf, bits(&df)),
                        "filtered gallery != knn"
                    );
                    if n > 1 {
                        let q1 = Matrix::new(&q.as_slice()[..d], 1, d).unwrap();
                        let (mut i1, mut d1) = (vec![0_u32; k], vec![0.0_f32; k]);
                        triplet_kernels::knn_gallery(q1, &gf, k, &mut i1, &mut d1, &mut ws)
                            .unwrap();
                        assert_eq!(
                            (&i1[..], bits(&d1)),
                            (&idf[..k], bits(&df[..k])),
                            "one query"
                        );
                    }
                }
                Err(e) => {
                    assert!(yd.iter().any(|v| !v.is_finite()), "prepare_gallery: {e:?}");
                }
            }
        }
        // The k nearest are the first k of the full ranking: the same pair distances,
        // one total order.
        let (fi, fd) = full.as_ref().unwrap();
        for i in 0..n {
            assert_eq!(
                (&idf[i * k..(i + 1) * k], bits(&df[i * k..(i + 1) * k])),
                (
                    &fi[i * available..i * available + k],
                    bits(&fd[i * available..i * available + k])
                ),
                "query {i}: the {k} nearest are not the head of the full ranking"
            );
        }
        if metric == Metric::Euclidean {
            // Ranked by the square, one square root per listed neighbour.
            let sq = Problem {
                metric: Metric::SquaredEuclidean,
                ..p
            };
            let (r2, idq, dq) = run_knn(q, y, Metric::SquaredEuclidean, k, true, garbage);
            assert_eq!(r2, Ok(()));
            check_lists(&sq, k, &idq, &dq, true);
            assert_eq!(idf, idq, "Euclidean and squared Euclidean lists differ");
            for (t, (&e, &s)) in df.iter().zip(&dq).enumerate() {
                assert!(
                    same_f32(e, s.sqrt()),
                    "entry {t}: Euclidean {e}, squared {s} (root {})",
                    s.sqrt()
                );
            }
        }
        let finite = xd.iter().chain(&yd).all(|v| v.is_finite());
        if finite && rows_in_range(&xd, d) && rows_in_range(&yd, d) {
            if regime == Regime::Int && metric != Metric::Cosine {
                assert_eq!(idf, ids, "integer data: identical indices");
                assert_eq!(bits(&df), bits(&ds), "integer data: identical distances");
            } else {
                for i in 0..n {
                    let a = q.row(i).unwrap();
                    let tol = p
                        .retrievable(i)
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
    if kr == 0 || kr > available {
        expected.push(invalid("k", DOMAIN_K));
    }
    expected.extend(non_finite("queries", &xd, d));
    expected.extend(non_finite("reference", &yd, d));
    let wlen = retrieval_metrics_workspace_len(n, m, d)
        .max(scalar::retrieval_metrics_workspace_len(n, m, d));
    let mut ws = vec![garbage; wlen];
    let mf = retrieval_metrics(q, &labels, reference, metric, kr, &mut ws);
    ws.fill(-garbage);
    let mf2 = retrieval_metrics(q, &labels, reference, metric, kr, &mut ws);
    let ms = scalar::retrieval_metrics(q, &labels, reference, metric, kr, &mut ws);
    let finite_errors: Vec<Error> = non_finite("queries", &xd, d)
        .into_iter()
        .chain(non_finite("reference", &yd, d))
        .collect();
    check_metrics_at(
        &mut g,
        q,
        &labels,
        reference,
        metric,
        available,
        &finite_errors,
        garbage,
    );
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
    // knn's own full ranking ("exactly as knn ranks").
    let ranking: Vec<Vec<usize>> = (0..n)
        .map(|i| {
            full.as_ref().map_or_else(Vec::new, |(idx, _)| {
                idx[i * available..(i + 1) * available]
                    .iter()
                    .map(|&j| j as usize)
                    .collect()
            })
        })
        .collect();
    let (wf, we) = textbook(&labels, &ref_labels, loo, &ranking, kr);
    assert_eq!(fe, we);
    for (a, b) in ff.iter().zip(&wf) {
        assert!(
            (a - b).abs() <= 1e-12,
            "{mf:?} vs textbook of knn's ranking {wf:?}"
        );
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
