//! Differential target: online mining (`mine_triplets_count`, `mine_triplets`,
//! `hardest_pairs`, the split sweep `hardest_pairs_part` / `merge_hardest_pairs` /
//! `triplet_hardest_pairs_loss_grad`), the threshold miners (`triplet_mine(_count)`, `pair_mine(_count)`,
//! `multi_similarity_mine(_count)`) and the losses over pairs
//! (`multi_similarity_loss(_pairs)(_grad)`, `contrastive_loss_pairs(_grad)`) against the
//! scalar twins, on bounded structured batches.
//!
//! Threshold miners and pair losses: fast and twin agree on `Ok`/`Err` and return the
//! documented first error (parameters, then data) with every output untouched; counts
//! equal the lengths written; the lists ascend and hold valid candidates; the cap keeps a
//! seeded subset of length `min(cap, count)`. Integer data under the squared Euclidean
//! metric give lists identical to the twin's (capped ones too); elsewhere a decision may
//! differ only within the distance bound of its threshold. The losses agree with their
//! twins within the bounds of `testkit::miners` on integer and moderate data.
//!
//! - Always: no panic; fast and twin agree on `Ok`/`Err`; non-finite data gives
//!   `NonFinite` at the first bad element, finite data outside the documented range
//!   (`|x_ik| sqrt(dim) > 2^52`) `TooLarge` at the first element of largest magnitude,
//!   with every output untouched; counts are the label formulas; the selections are
//!   structurally valid (positives share the anchor's label, negatives do not, `NO_INDEX`
//!   exactly where no candidate exists, `out` past the count untouched).
//! - Accepted data: the fast selections follow the documented rules *exactly* on the
//!   `f32` distance matrix of `pairwise_distances` (ties to the smallest index) where both
//!   distance forms are exact.
//! - Accepted data (always in the range of the distance bounds): integer data under the
//!   Euclidean metrics give indices identical to the twin's; general floats give chosen
//!   distances equal within the distance bound. Semi-hard decisions may differ where a
//!   negative lies within rounding of the positive's distance, so there only the values
//!   are compared, and only away from such ties.
//! - Split sweep (batches of up to 600 rows, several tiles): a bad part is refused
//!   before the data; parts merged equal the whole sweep bit for bit, whose indices are
//!   `hardest_pairs`'s, and the loss over the merge is `triplet_batch_loss_grad`'s bit for
//!   bit; fast and twin parts agree on `Ok`/`Err`, and exactly on integer data under the
//!   squared Euclidean metric.

#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use testkit::miners::{
    contrastive_pairs_tolerances, ms_near_threshold, ms_tolerances, sim_tol, sims, window,
};
use triplet_kernels::{
    contrastive_loss_pairs, contrastive_loss_pairs_grad, contrastive_loss_pairs_workspace_len,
    hardest_pairs, hardest_pairs_part, hardest_pairs_part_workspace_len, merge_hardest_pairs,
    mine_triplets, mine_triplets_count, mine_triplets_workspace_len, multi_similarity_loss,
    multi_similarity_loss_grad, multi_similarity_loss_pairs, multi_similarity_loss_pairs_grad,
    multi_similarity_loss_pairs_workspace_len, multi_similarity_loss_workspace_len,
    multi_similarity_mine, multi_similarity_mine_count, pair_mine, pair_mine_count,
    pair_mine_workspace_len, pairwise_distances, pairwise_distances_workspace_len, scalar,
    triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_hardest_pairs_loss_grad, triplet_hardest_pairs_loss_workspace_len, triplet_mine,
    triplet_mine_count, triplet_mine_workspace_len, BatchParams, ContrastiveForm,
    ContrastiveParams, ContrastiveReduction, Error, HardestPair, Matrix, Metric, Mining,
    MultiSimilarityMinerParams, MultiSimilarityParams, Pair, PairCounts, PairMinerParams,
    SweepPart, Triplet, TripletMinerParams, TripletType, NO_INDEX,
};

/// `sum_a pos(a) * neg(a)` and friends, from the labels.
fn count_by_formula(labels: &[u32], mining: Mining) -> usize {
    let mut total = 0;
    for (a, &la) in labels.iter().enumerate() {
        let pos = labels
            .iter()
            .enumerate()
            .filter(|&(j, &l)| j != a && l == la)
            .count();
        let neg = labels.iter().filter(|&&l| l != la).count();
        total += match mining {
            Mining::All => pos * neg,
            Mining::BatchHard => usize::from(pos > 0 && neg > 0),
            Mining::SemiHard => {
                if neg > 0 {
                    pos
                } else {
                    0
                }
            }
            _ => unreachable!("a variant this test does not know"),
        };
    }
    total
}

/// The selections of the docs on a distance matrix `dist` (`n x n`).
struct Rules {
    pos: Vec<u32>,
    neg: Vec<u32>,
    triplets: [Vec<Triplet>; 3],
}

fn rules(dist: &[f32], labels: &[u32]) -> Rules {
    let n = labels.len();
    let mut pos = vec![NO_INDEX; n];
    let mut neg = vec![NO_INDEX; n];
    let mut all = Vec::new();
    let mut hard = Vec::new();
    let mut semi = Vec::new();
    for a in 0..n {
        let row = &dist[a * n..(a + 1) * n];
        let positives = || (0..n).filter(move |&j| j != a && labels[j] == labels[a]);
        let negatives = || (0..n).filter(move |&j| labels[j] != labels[a]);
        let p = extreme(row, positives(), true);
        let q = extreme(row, negatives(), false);
        pos[a] = p.map_or(NO_INDEX, |v| v as u32);
        neg[a] = q.map_or(NO_INDEX, |v| v as u32);
        if let (Some(p), Some(q)) = (p, q) {
            hard.push(Triplet::new(a as u32, p as u32, q as u32));
        }
        for p in positives() {
            for q in negatives() {
                all.push(Triplet::new(a as u32, p as u32, q as u32));
            }
            if negatives().next().is_some() {
                let dap = row[p];
                let q = extreme(row, negatives().filter(|&j| row[j] > dap), false)
                    .or_else(|| extreme(row, negatives(), true))
                    .unwrap();
                semi.push(Triplet::new(a as u32, p as u32, q as u32));
            }
        }
    }
    Rules {
        pos,
        neg,
        triplets: [all, hard, semi],
    }
}

struct Run {
    pos: Vec<u32>,
    neg: Vec<u32>,
    triplets: [Vec<Triplet>; 3],
}

/// Runs the three kernels (fast or twin); `None` when they refuse the batch (after
/// checking that the refusal is the documented `NonFinite` or `TooLarge` and that nothing
/// was written).
fn run(x: Matrix<'_>, labels: &[u32], metric: Metric, fast: bool, garbage: f32) -> Option<Run> {
    let n = x.rows();
    let mut ws = vec![garbage; mine_triplets_workspace_len(n, x.dim())];
    let mut pos = vec![7_u32; n];
    let mut neg = vec![7_u32; n];
    let r = if fast {
        hardest_pairs(x, labels, metric, &mut pos, &mut neg, &mut ws)
    } else {
        scalar::hardest_pairs(x, labels, metric, &mut pos, &mut neg, &mut ws)
    };
    let bad = data_error(x.as_slice(), x.dim(), true);
    let sentinel = Triplet::new(1, 2, 3);
    let triplets = MININGS.map(|m| {
        let count = mine_triplets_count(labels, m).unwrap();
        let mut out = vec![sentinel; count + 1];
        ws.fill(garbage);
        let k = if fast {
            mine_triplets(x, labels, metric, m, &mut out, &mut ws)
        } else {
            scalar::mine_triplets(x, labels, metric, m, &mut out, &mut ws)
        };
        match bad {
            Some(e) => {
                assert_eq!(k, Err(e));
                assert!(out.iter().all(|t| *t == sentinel), "written on Err");
            }
            None => assert_eq!(k, Ok(count), "{m:?}"),
        }
        assert_eq!(out[count], sentinel, "past the count");
        out.truncate(count);
        out
    });
    if let Some(e) = bad {
        assert_eq!(r, Err(e));
        assert!(pos.iter().chain(&neg).all(|&v| v == 7), "written on Err");
        return None;
    }
    r.unwrap();
    Some(Run { pos, neg, triplets })
}

/// Structure of a run: labels only, whatever the distances.
fn check_structure(labels: &[u32], r: &Run) {
    let n = labels.len();
    for a in 0..n {
        let has_pos = (0..n).any(|j| j != a && labels[j] == labels[a]);
        let has_neg = (0..n).any(|j| labels[j] != labels[a]);
        assert_eq!(r.pos[a] == NO_INDEX, !has_pos, "positives[{a}]");
        assert_eq!(r.neg[a] == NO_INDEX, !has_neg, "negatives[{a}]");
        if has_pos {
            let p = r.pos[a] as usize;
            assert!(p < n && p != a && labels[p] == labels[a]);
        }
        if has_neg {
            let q = r.neg[a] as usize;
            assert!(q < n && labels[q] != labels[a]);
        }
    }
    // Batch-all is fixed by the labels; batch-hard is hardest_pairs' choice.
    let want_all: Vec<Triplet> = (0..n)
        .flat_map(|a| {
            (0..n)
                .filter(move |&p| p != a && labels[p] == labels[a])
                .flat_map(move |p| {
                    (0..n)
                        .filter(move |&q| labels[q] != labels[a])
                        .map(move |q| Triplet::new(a as u32, p as u32, q as u32))
                })
        })
        .collect();
    assert_eq!(r.triplets[0], want_all, "batch-all triplets");
    let want_hard: Vec<Triplet> = (0..n)
        .filter(|&a| r.pos[a] != NO_INDEX && r.neg[a] != NO_INDEX)
        .map(|a| Triplet::new(a as u32, r.pos[a], r.neg[a]))
        .collect();
    assert_eq!(r.triplets[1], want_hard, "batch-hard triplets");
    for t in &r.triplets[2] {
        let (a, p, q) = (t.anchor as usize, t.positive as usize, t.negative as usize);
        assert!(p != a && labels[p] == labels[a] && labels[q] != labels[a]);
    }
}

/// The split batch-hard sweep on its own batch (see the module docs).
fn split_sweep(g: &mut Gen, regime: Regime, metric: Metric, garbage: f32) {
    let n = if g.bool() {
        g.range(257, 600)
    } else {
        g.size(1, 40)
    };
    let d = g.size(1, 4);
    let classes = g.range(1, 8);
    let labels = g.labels(n, classes);
    let xd = g.values(regime, n * d);
    let x = Matrix::new(&xd, n, d).unwrap();
    let parts = g.range(1, 6);
    let bad = data_error(&xd, d, true);
    let mut ws = vec![garbage; hardest_pairs_part_workspace_len(n, d)];
    let sentinel = HardestPair {
        positive: 7,
        ..HardestPair::NONE
    };
    let part = |fast: bool, p: SweepPart, ws: &mut [f32]| {
        let mut out = vec![sentinel; n];
        let r = if fast {
            hardest_pairs_part(x, &labels, metric, p, &mut out, ws)
        } else {
            scalar::hardest_pairs_part(x, &labels, metric, p, &mut out, ws)
        };
        (r, out)
    };
    // Parameters before data.
    for fast in [true, false] {
        let (r, out) = part(fast, SweepPart::new(parts, parts), &mut ws);
        assert_eq!(r, Err(invalid("part", "index < parts")));
        assert!(out.iter().all(|c| *c == sentinel), "written on Err");
    }
    let mut merged = vec![HardestPair::NONE; n];
    for i in 0..parts {
        let p = SweepPart::new(i, parts);
        let (rf, f) = part(true, p, &mut ws);
        let (rs, s) = part(false, p, &mut ws);
        if let Some(e) = bad {
            assert_eq!((rf, rs), (Err(e), Err(e)));
            assert!(f.iter().chain(&s).all(|c| *c == sentinel), "written on Err");
            continue;
        }
        rf.unwrap();
        rs.unwrap();
        if regime == Regime::Int && metric == Metric::SquaredEuclidean {
            assert_eq!(f, s, "part {i} of {parts} against the twin");
        }
        merge_hardest_pairs(&mut merged, &f).unwrap();
    }
    if bad.is_some() {
        return;
    }
    let (r, whole) = part(true, SweepPart::WHOLE, &mut ws);
    r.unwrap();
    let bits = |v: &[HardestPair]| -> Vec<[u32; 4]> {
        v.iter()
            .map(|c| {
                let (p, q) = (c.pos_dist.to_bits(), c.neg_dist.to_bits());
                [c.positive, c.negative, p, q]
            })
            .collect()
    };
    assert_eq!(
        bits(&merged),
        bits(&whole),
        "merged parts against the whole sweep"
    );
    let (mut pos, mut neg) = (vec![0; n], vec![0; n]);
    let mut wsh = vec![garbage; mine_triplets_workspace_len(n, d)];
    hardest_pairs(x, &labels, metric, &mut pos, &mut neg, &mut wsh).unwrap();
    assert!(whole.iter().zip(&pos).all(|(c, &p)| c.positive == p));
    assert!(whole.iter().zip(&neg).all(|(c, &q)| c.negative == q));
    let params = BatchParams::new()
        .with_metric(metric)
        .with_mining(Mining::BatchHard)
        .with_hinge(g.hinge())
        .with_reduction(g.reduction())
        .with_margin(f32::from(g.byte() % 8) * 0.125);
    let mut g1 = vec![garbage; n * d];
    let mut g2 = vec![garbage; n * d];
    let mut ws1 = vec![garbage; triplet_hardest_pairs_loss_workspace_len(n, d)];
    let mut ws2 = vec![garbage; triplet_batch_loss_grad_workspace_len(n, d, params)];
    let split = triplet_hardest_pairs_loss_grad(x, &merged, params, &mut g1, &mut ws1);
    let one = triplet_batch_loss_grad(x, &labels, params, &mut g2, &mut ws2);
    assert_eq!(split, one);
    let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(b(&g1), b(&g2), "gradient over the merge");
}

fuzz_target!(|data: &[u8]| {
    let mut g = Gen::new(data);
    let regime = g.regime();
    let n = g.size(1, 33);
    let d = g.size(1, 67);
    let classes = g.range(1, 6);
    let metric = g.metric();
    let garbage = g.garbage();
    let labels = g.labels(n, classes);
    let xd = g.values(regime, n * d);
    let x = Matrix::new(&xd, n, d).unwrap();
    if dump() {
        eprintln!("mining: n {n} d {d} {metric:?}\nx {xd:?}\nlabels {labels:?}");
    }
    threshold_miners(&mut g, regime, x, &labels, metric, garbage);
    split_sweep(&mut g, regime, metric, garbage);

    for m in MININGS {
        let c = mine_triplets_count(&labels, m);
        assert_eq!(c, scalar::mine_triplets_count(&labels, m));
        assert_eq!(c, Ok(count_by_formula(&labels, m)));
    }

    let Some(f) = run(x, &labels, metric, true, garbage) else {
        assert!(run(x, &labels, metric, false, garbage).is_none());
        return;
    };
    let s = run(x, &labels, metric, false, garbage).expect("twin refused finite data");
    check_structure(&labels, &f);
    check_structure(&labels, &s);
    // The twin's batch-all list is fixed by the labels, and its (a, p) pairs too.
    assert_eq!(f.triplets[0], s.triplets[0]);
    assert_eq!(f.triplets[2].len(), s.triplets[2].len());
    for (tf, ts) in f.triplets[2].iter().zip(&s.triplets[2]) {
        assert_eq!((tf.anchor, tf.positive), (ts.anchor, ts.positive));
    }

    // The rules, exactly, on the f32 distances the fast kernels decide on.
    let mut dist = vec![0.0_f32; n * n];
    let mut ws = vec![0.0_f32; pairwise_distances_workspace_len(n, d)];
    pairwise_distances(x, metric, &mut dist, &mut ws).unwrap();
    // The fused kernels decide on Gram distances re-checked in the direct form where the
    // Gram form is inexact; both forms are exact, and so equal to these, on integer data
    // with squared norms below 2^24. Elsewhere the value checks below hold them to the bound.
    let exact_data = gram_exact(&xd, d);
    if exact_data && dist.iter().all(|v| !v.is_nan()) {
        let want = rules(&dist, &labels);
        assert_eq!(f.pos, want.pos, "farthest positives");
        assert_eq!(f.neg, want.neg, "nearest negatives");
        assert_eq!(f.triplets, want.triplets, "mined triplets");
    }

    // Accepted data lie in the range of the distance bounds.
    assert!(rows_in_range(&xd, d), "accepted data past the range");
    if regime == Regime::Int && metric != Metric::Cosine {
        assert_eq!(f.pos, s.pos);
        assert_eq!(f.neg, s.neg);
        assert_eq!(f.triplets, s.triplets);
        return;
    }
    // General floats: equal chosen distances within the bound.
    let r = |i: usize| x.row(i).unwrap();
    let dd = |i: usize, j: usize| dist64(metric, r(i), r(j));
    let tt = |i: usize, j: usize| dist_tol(metric, r(i), r(j));
    let same =
        |a: usize, i: usize, j: usize| (dd(a, i) - dd(a, j)).abs() <= 2.0 * (tt(a, i) + tt(a, j));
    for a in 0..n {
        for (fi, si) in [(f.pos[a], s.pos[a]), (f.neg[a], s.neg[a])] {
            if fi != si {
                assert!(
                    same(a, fi as usize, si as usize),
                    "anchor {a}: fast picks {fi} at {}, twin {si} at {}",
                    dd(a, fi as usize),
                    dd(a, si as usize)
                );
            }
        }
    }
    for (tf, ts) in f.triplets[2].iter().zip(&s.triplets[2]) {
        let (a, p) = (tf.anchor as usize, tf.positive as usize);
        let (qf, qs) = (tf.negative as usize, ts.negative as usize);
        if qf == qs || same(a, qf, qs) {
            continue;
        }
        // A different semi-hard decision needs a negative within rounding of d(a, p).
        let boundary_tie = (0..n)
            .filter(|&j| labels[j] != labels[a])
            .any(|j| (dd(a, j) - dd(a, p)).abs() <= 2.0 * (tt(a, j) + tt(a, p)));
        assert!(
            boundary_tie,
            "semi-hard ({a}, {p}): fast {qf} at {}, twin {qs} at {}, no tie at d(a,p) = {}",
            dd(a, qf),
            dd(a, qs),
            dd(a, p)
        );
    }
});

// ---------------------------------------------------------------------------------------
// Threshold miners and the losses over pairs.

const TYPES: [TripletType; 4] = [
    TripletType::All,
    TripletType::Hard,
    TripletType::SemiHard,
    TripletType::Easy,
];

/// The first error the threshold miners document: the parameter, then the data.
fn first_error(param: Option<Error>, x: &Matrix<'_>, range_checked: bool) -> Option<Error> {
    param.or_else(|| data_error(x.as_slice(), x.dim(), range_checked))
}

fn finite_or(name: &'static str, v: f32) -> Option<Error> {
    (!v.is_finite()).then(|| invalid(name, DOMAIN_FINITE))
}

/// `triplet_mine` (fast or twin) into a large output: the list, or the error with the
/// output untouched; the count function agrees.
fn mine_t(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    p: TripletMinerParams,
    fast: bool,
    garbage: f32,
) -> Result<Vec<Triplet>, Error> {
    let n = x.rows();
    let mut ws = vec![garbage; triplet_mine_workspace_len(n, x.dim())];
    let count = if fast {
        triplet_mine_count(x, labels, metric, p, &mut ws)
    } else {
        scalar::triplet_mine_count(x, labels, metric, p, &mut ws)
    };
    let sentinel = Triplet::new(u32::MAX, 1, 2);
    let mut out = vec![sentinel; n * n * n + 1];
    let k = if fast {
        triplet_mine(x, labels, metric, p, &mut out, &mut ws)
    } else {
        scalar::triplet_mine(x, labels, metric, p, &mut out, &mut ws)
    };
    match (count, k) {
        (Ok(c), Ok(k)) => {
            assert_eq!(
                k,
                p.max_triplets.map_or(c, |m| m.min(c)),
                "written vs count"
            );
            assert!(out[k..].iter().all(|&t| t == sentinel), "past the count");
            out.truncate(k);
            assert!(out.windows(2).all(|w| w[0] < w[1]), "not ascending");
            for t in &out {
                let (a, p, q) = (t.anchor as usize, t.positive as usize, t.negative as usize);
                assert!(
                    a != p && labels[a] == labels[p] && labels[a] != labels[q],
                    "{t:?}"
                );
            }
            Ok(out)
        }
        (Err(e), Err(f)) => {
            assert_eq!(e, f, "count and mine refuse differently");
            assert!(out.iter().all(|&t| t == sentinel), "written on Err");
            Err(e)
        }
        (c, k) => panic!("count {c:?}, mine {k:?}"),
    }
}

fn mine_p(
    x: Matrix<'_>,
    labels: &[u32],
    run: impl Fn(&mut [Pair], &mut [Pair], &mut [f32]) -> Result<PairCounts, Error>,
    count: impl Fn(&mut [f32]) -> Result<PairCounts, Error>,
    garbage: f32,
) -> Result<(Vec<Pair>, Vec<Pair>), Error> {
    let n = x.rows();
    let mut ws = vec![garbage; pair_mine_workspace_len(n, x.dim())];
    let s = Pair::new(u32::MAX, 5);
    let (mut pos, mut neg) = (vec![s; n * n + 1], vec![s; n * n + 1]);
    let c = count(&mut ws);
    ws.fill(garbage);
    match (c, run(&mut pos, &mut neg, &mut ws)) {
        (Ok(c), Ok(w)) => {
            assert_eq!(c, w, "written vs count");
            assert!(pos[c.positives..]
                .iter()
                .chain(&neg[c.negatives..])
                .all(|&p| p == s));
            pos.truncate(c.positives);
            neg.truncate(c.negatives);
            assert!(pos.windows(2).all(|w| w[0] < w[1]) && neg.windows(2).all(|w| w[0] < w[1]));
            for q in &pos {
                let (a, j) = (q.anchor as usize, q.other as usize);
                assert!(a != j && labels[a] == labels[j], "positive {q:?}");
            }
            for q in &neg {
                assert!(
                    labels[q.anchor as usize] != labels[q.other as usize],
                    "negative {q:?}"
                );
            }
            Ok((pos, neg))
        }
        (Err(e), Err(f)) => {
            assert_eq!(e, f, "count and mine refuse differently");
            assert!(pos.iter().chain(&neg).all(|&p| p == s), "written on Err");
            Err(e)
        }
        (c, w) => panic!("count {c:?}, mine {w:?}"),
    }
}

/// The elements of exactly one of two ascending lists.
fn sym_diff<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out: Vec<T> = a
        .iter()
        .filter(|p| b.binary_search(p).is_err())
        .copied()
        .collect();
    out.extend(b.iter().filter(|p| a.binary_search(p).is_err()));
    out
}

fn threshold_miners(
    g: &mut Gen<'_>,
    regime: Regime,
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    garbage: f32,
) {
    let (n, d) = (x.rows(), x.dim());
    let xd = x.as_slice();
    let exact = metric == Metric::SquaredEuclidean && gram_exact(xd, d);
    let r = |i: usize| x.row(i).unwrap();
    // Values and decisions are compared where the bounds hold: no element whose square
    // underflows, finite accepted data in the range of the distance bounds.
    let bounded = !has_tiny_elements(xd) && rows_in_range(xd, d);

    // triplet_mine
    let margin = g.param(regime, -1.0, 4.0);
    let kind = TYPES[g.range(0, 3)];
    let cap = g.range(0, 64);
    let seed = u64::from(g.u32());
    let p = TripletMinerParams::new(margin, kind);
    let want_err = first_error(finite_or("margin", margin), &x, true);
    let f = mine_t(x, labels, metric, p, true, garbage);
    let t = mine_t(x, labels, metric, p, false, garbage);
    match (&f, &t) {
        (Ok(f), Ok(t)) => {
            assert!(want_err.is_none(), "accepted, want {want_err:?}");
            if exact {
                assert_eq!(f, t, "triplets on exact distances");
            } else if bounded {
                let (lo, hi) = window(kind, margin);
                for tr in sym_diff(f, t) {
                    let (a, p, q) = (
                        tr.anchor as usize,
                        tr.positive as usize,
                        tr.negative as usize,
                    );
                    let gap = dist64(metric, r(a), r(q)) - dist64(metric, r(a), r(p));
                    let tol = 2.0 * (dist_tol(metric, r(a), r(q)) + dist_tol(metric, r(a), r(p)));
                    let near = [lo, hi]
                        .iter()
                        .any(|&e| e.is_finite() && (gap - f64::from(e)).abs() <= tol);
                    assert!(near, "{tr:?}: g = {gap}, window ({lo}, {hi}], tol {tol:e}");
                }
            }
            // The cap: a seeded subset, the same twice, identical to the twin's on exact
            // distances.
            let pc = p.with_cap(cap, seed);
            let c1 = mine_t(x, labels, metric, pc, true, garbage).unwrap();
            let c2 = mine_t(x, labels, metric, pc, true, garbage).unwrap();
            assert_eq!(c1, c2, "same seed, another subset");
            assert_eq!(c1.len(), cap.min(f.len()));
            assert!(
                c1.iter().all(|t| f.binary_search(t).is_ok()),
                "capped not a subset"
            );
            if exact {
                assert_eq!(c1, mine_t(x, labels, metric, pc, false, garbage).unwrap());
            }
        }
        (Err(e), Err(e2)) => {
            assert_eq!(e, e2);
            assert_eq!(Some(*e), want_err);
        }
        _ => panic!("triplet_mine: fast {f:?}, twin {t:?}"),
    }

    // pair_mine
    let pp = PairMinerParams::new(g.param(regime, 0.0, 4.0), g.param(regime, 0.0, 4.0));
    let want_err = first_error(
        finite_or("pos_margin", pp.pos_margin).or(finite_or("neg_margin", pp.neg_margin)),
        &x,
        true,
    );
    let pm = |fast: bool| {
        mine_p(
            x,
            labels,
            |pos, neg, ws| {
                if fast {
                    pair_mine(x, labels, metric, pp, pos, neg, ws)
                } else {
                    scalar::pair_mine(x, labels, metric, pp, pos, neg, ws)
                }
            },
            |ws| {
                if fast {
                    pair_mine_count(x, labels, metric, pp, ws)
                } else {
                    scalar::pair_mine_count(x, labels, metric, pp, ws)
                }
            },
            garbage,
        )
    };
    let (f, t) = (pm(true), pm(false));
    let mined = match (&f, &t) {
        (Ok(f), Ok(t)) => {
            assert!(want_err.is_none(), "accepted, want {want_err:?}");
            if exact {
                assert_eq!(f, t, "pairs on exact distances");
            } else if bounded {
                for (m, (lf, lt)) in [(pp.pos_margin, (&f.0, &t.0)), (pp.neg_margin, (&f.1, &t.1))]
                {
                    for q in sym_diff(lf, lt) {
                        let (a, j) = (r(q.anchor as usize), r(q.other as usize));
                        let dd = dist64(metric, a, j);
                        let tol = 2.0 * dist_tol(metric, a, j);
                        assert!(
                            (dd - f64::from(m)).abs() <= tol,
                            "{q:?}: d {dd}, margin {m}"
                        );
                    }
                }
            }
            Some(f.clone())
        }
        (Err(e), Err(e2)) => {
            assert_eq!(e, e2);
            assert_eq!(Some(*e), want_err);
            None
        }
        _ => panic!("pair_mine: fast {f:?}, twin {t:?}"),
    };

    // contrastive_loss_pairs over the mined pairs
    let cp = ContrastiveParams::new(g.param(regime, 0.0, 2.0), g.param(regime, 0.0, 4.0))
        .with_form(if g.bool() {
            ContrastiveForm::Squared
        } else {
            ContrastiveForm::Linear
        })
        .with_reduction(
            [
                ContrastiveReduction::MeanNonzeroPerPart,
                ContrastiveReduction::MeanPerPart,
                ContrastiveReduction::Mean,
                ContrastiveReduction::Sum,
            ][g.range(0, 3)],
        );
    let (pos, neg) = mined.unwrap_or_default();
    let want_err = first_error(
        finite_or("pos_margin", cp.pos_margin).or(finite_or("neg_margin", cp.neg_margin)),
        &x,
        true,
    );
    let k = pos.len() + neg.len();
    let run_c = |fast: bool| {
        let len = if fast {
            contrastive_loss_pairs_workspace_len(n, d, k)
        } else {
            scalar::contrastive_loss_pairs_workspace_len(n, d, k)
        };
        let mut ws = vec![garbage; len];
        let mut grad = vec![garbage; n * d];
        let (l, lg) = if fast {
            (
                contrastive_loss_pairs(x, metric, cp, &pos, &neg, &mut ws),
                contrastive_loss_pairs_grad(x, metric, cp, &pos, &neg, &mut grad, &mut ws),
            )
        } else {
            (
                scalar::contrastive_loss_pairs(x, metric, cp, &pos, &neg, &mut ws),
                scalar::contrastive_loss_pairs_grad(x, metric, cp, &pos, &neg, &mut grad, &mut ws),
            )
        };
        assert_eq!(
            l.map(f32::to_bits),
            lg.map(f32::to_bits),
            "loss vs grad call"
        );
        if l.is_err() {
            assert!(
                grad.iter().all(|v| v.to_bits() == garbage.to_bits()),
                "grad written on Err"
            );
        }
        l.map(|l| (l, grad))
    };
    match (run_c(true), run_c(false)) {
        (Ok((lf, gf)), Ok((lt, gt))) => {
            assert!(want_err.is_none(), "accepted, want {want_err:?}");
            if regime != Regime::Wild && bounded {
                if let Some((tl, tg)) = contrastive_pairs_tolerances(&x, metric, &pos, &neg, &cp) {
                    let diff = (f64::from(lf) - f64::from(lt)).abs();
                    assert!(
                        diff <= tl,
                        "contrastive loss: fast {lf}, twin {lt}, tol {tl:e}"
                    );
                    assert_close("contrastive grad", &gf, &gt, |i| tg[i / d]);
                }
            }
        }
        (Err(e), Err(e2)) => {
            assert_eq!(e, e2);
            assert_eq!(Some(e), want_err);
        }
        (f, t) => panic!(
            "contrastive_loss_pairs: fast {:?}, twin {:?}",
            f.map(|v| v.0),
            t.map(|v| v.0)
        ),
    }

    // multi_similarity_mine
    let eps = g.param(regime, -0.5, 0.5);
    let mp = MultiSimilarityMinerParams::new(eps);
    let want_err = first_error(finite_or("epsilon", eps), &x, true);
    let mm = |fast: bool| {
        mine_p(
            x,
            labels,
            |pos, neg, ws| {
                if fast {
                    multi_similarity_mine(x, labels, mp, pos, neg, ws)
                } else {
                    scalar::multi_similarity_mine(x, labels, mp, pos, neg, ws)
                }
            },
            |ws| {
                if fast {
                    multi_similarity_mine_count(x, labels, mp, ws)
                } else {
                    scalar::multi_similarity_mine_count(x, labels, mp, ws)
                }
            },
            garbage,
        )
    };
    let (f, t) = (mm(true), mm(false));
    let mined = match (&f, &t) {
        (Ok(f), Ok(t)) => {
            assert!(want_err.is_none(), "accepted, want {want_err:?}");
            if bounded {
                let s = sims(&x);
                let tol = 2.0 * sim_tol(d);
                let e = f64::from(eps);
                for (positive, (lf, lt)) in [(true, (&f.0, &t.0)), (false, (&f.1, &t.1))] {
                    for q in sym_diff(lf, lt) {
                        assert!(
                            ms_near_threshold(&s, labels, e, positive, q, tol),
                            "{q:?} decided differently away from its threshold"
                        );
                    }
                }
            }
            Some(f.clone())
        }
        (Err(e), Err(e2)) => {
            assert_eq!(e, e2);
            assert_eq!(Some(*e), want_err);
            None
        }
        _ => panic!("multi_similarity_mine: fast {f:?}, twin {t:?}"),
    };

    // multi_similarity_loss over every pair and over the mined pairs
    let msp = MultiSimilarityParams::new(
        g.param(regime, 0.1, 10.0),
        g.param(regime, 0.1, 80.0),
        g.param(regime, -1.0, 1.0),
    );
    let scale = |v: f32| v.is_finite() && v > 0.0 && v <= 1e4;
    let param_err = if !scale(msp.alpha) {
        Some(invalid("alpha", "finite, in (0, 1e4]"))
    } else if !scale(msp.beta) {
        Some(invalid("beta", "finite, in (0, 1e4]"))
    } else if !(msp.base.is_finite() && msp.base.abs() <= 1e4) {
        Some(invalid("base", "finite, |base| <= 1e4"))
    } else {
        None
    };
    let (pos, neg) = mined.unwrap_or_default();
    let (all_pos, all_neg) = testkit::miners::all_pairs(labels);
    for listed in [false, true] {
        // Over every pair the rows are normalised first: no range check.
        let want_err = first_error(param_err, &x, listed);
        let run_m = |fast: bool| {
            let k = pos.len() + neg.len();
            let len = match (listed, fast) {
                (false, true) => multi_similarity_loss_workspace_len(n, d),
                (false, false) => scalar::multi_similarity_loss_workspace_len(n, d),
                (true, true) => multi_similarity_loss_pairs_workspace_len(n, d, k),
                (true, false) => scalar::multi_similarity_loss_pairs_workspace_len(n, d, k),
            };
            let mut ws = vec![garbage; len];
            let mut grad = vec![garbage; n * d];
            let (l, lg) = match (listed, fast) {
                (false, true) => (
                    multi_similarity_loss(x, labels, msp, &mut ws),
                    multi_similarity_loss_grad(x, labels, msp, &mut grad, &mut ws),
                ),
                (false, false) => (
                    scalar::multi_similarity_loss(x, labels, msp, &mut ws),
                    scalar::multi_similarity_loss_grad(x, labels, msp, &mut grad, &mut ws),
                ),
                (true, true) => (
                    multi_similarity_loss_pairs(x, &pos, &neg, msp, &mut ws),
                    multi_similarity_loss_pairs_grad(x, &pos, &neg, msp, &mut grad, &mut ws),
                ),
                (true, false) => (
                    scalar::multi_similarity_loss_pairs(x, &pos, &neg, msp, &mut ws),
                    scalar::multi_similarity_loss_pairs_grad(
                        x, &pos, &neg, msp, &mut grad, &mut ws,
                    ),
                ),
            };
            assert_eq!(
                l.map(f32::to_bits),
                lg.map(f32::to_bits),
                "loss vs grad call"
            );
            l.map(|l| (l, grad))
        };
        match (run_m(true), run_m(false)) {
            (Ok((lf, gf)), Ok((lt, gt))) => {
                assert!(want_err.is_none(), "accepted, want {want_err:?}");
                if regime != Regime::Wild && bounded && !near_clamp(xd, d, 1e-3) {
                    let (lp, ln) = if listed {
                        (&pos, &neg)
                    } else {
                        (&all_pos, &all_neg)
                    };
                    let (tl, tg) = ms_tolerances(&x, lp, ln, &msp);
                    let diff = (f64::from(lf) - f64::from(lt)).abs();
                    assert!(
                        diff <= tl,
                        "multi-similarity loss: fast {lf}, twin {lt}, tol {tl:e}"
                    );
                    assert_close("multi-similarity grad", &gf, &gt, |i| tg[i / d]);
                }
            }
            (Err(e), Err(e2)) => {
                assert_eq!(e, e2);
                assert_eq!(Some(e), want_err);
            }
            (f, t) => panic!(
                "multi_similarity_loss: fast {:?}, twin {:?}",
                f.map(|v| v.0),
                t.map(|v| v.0)
            ),
        }
    }
}
