//! Differential target: online mining (`mine_triplets_count`, `mine_triplets`,
//! `hardest_pairs`) against the scalar twins, on bounded structured batches.
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

#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use triplet_kernels::{
    hardest_pairs, mine_triplets, mine_triplets_count, mine_triplets_workspace_len,
    pairwise_distances, pairwise_distances_workspace_len, scalar, Matrix, Metric, Mining, Triplet,
    NO_INDEX,
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
