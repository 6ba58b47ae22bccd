//! The threshold miners and the losses over pairs: the rules in `f64` and the bounds of
//! the multi-similarity and pair-list contrastive losses against their twins.

use crate::contrastive::{term, weights, Pairs};
use crate::rows::{dist64, norm};
use crate::EPS;
use triplet_kernels::{
    ContrastiveForm, ContrastiveParams, Matrix, Metric, MultiSimilarityParams, Pair, TripletType,
};

/// Positive and negative pair lists.
pub type PairLists = (Vec<Pair>, Vec<Pair>);

/// The window `lo < g <= hi` of the kept `g = d(a, n) - d(a, p)`, as the docs state it.
pub fn window(t: TripletType, m: f32) -> (f32, f32) {
    match t {
        TripletType::All => (f32::NEG_INFINITY, m),
        TripletType::Hard => (f32::NEG_INFINITY, m.min(0.0)),
        TripletType::SemiHard => (0.0, m),
        TripletType::Easy => (m, f32::INFINITY),
        _ => unreachable!("a variant this test does not know"),
    }
}

/// Every ordered positive and negative pair of a labelled batch.
pub fn all_pairs(labels: &[u32]) -> PairLists {
    let n = labels.len();
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for a in 0..n {
        for j in 0..n {
            let p = Pair::new(a as u32, j as u32);
            if labels[a] != labels[j] {
                neg.push(p);
            } else if a != j {
                pos.push(p);
            }
        }
    }
    (pos, neg)
}

/// Cosine similarities of the batch in `f64` (a zero row has similarity 0).
pub fn sims(x: &Matrix<'_>) -> Vec<Vec<f64>> {
    let r: Vec<&[f32]> = x.row_iter().collect();
    r.iter()
        .map(|a| {
            r.iter()
                .map(|b| 1.0 - dist64(Metric::Cosine, a, b))
                .collect()
        })
        .collect()
}

/// The cosine similarity bound of the mining kernels, `(2 d + 10) 2^-24`, with a safety
/// factor of 4.
pub fn sim_tol(d: usize) -> f64 {
    4.0 * (2.0 * d as f64 + 10.0) * EPS
}

/// The epsilon rule of `multi_similarity_mine` on `f64` similarities.
pub fn ms_rule(s: &[Vec<f64>], labels: &[u32], eps: f64) -> PairLists {
    let n = labels.len();
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for a in 0..n {
        let pj = || (0..n).filter(move |&j| j != a && labels[j] == labels[a]);
        let nj = || (0..n).filter(move |&j| labels[j] != labels[a]);
        let min_pos = pj().map(|j| s[a][j]).fold(f64::INFINITY, f64::min);
        let max_neg = nj().map(|j| s[a][j]).fold(f64::NEG_INFINITY, f64::max);
        if min_pos.is_infinite() || max_neg.is_infinite() {
            continue;
        }
        pos.extend(
            pj().filter(|&j| s[a][j] - eps < max_neg)
                .map(|j| Pair::new(a as u32, j as u32)),
        );
        neg.extend(
            nj().filter(|&j| s[a][j] + eps > min_pos)
                .map(|j| Pair::new(a as u32, j as u32)),
        );
    }
    (pos, neg)
}

/// Whether a pair decided differently by two multi-similarity miners lies within `tol`
/// of its threshold (the hardest pair of the other kind, moved by `eps`).
pub fn ms_near_threshold(
    s: &[Vec<f64>],
    labels: &[u32],
    eps: f64,
    positive: bool,
    q: Pair,
    tol: f64,
) -> bool {
    let (a, j) = (q.anchor as usize, q.other as usize);
    (0..labels.len())
        .filter(|&o| {
            if positive {
                labels[o] != labels[a]
            } else {
                o != a && labels[o] == labels[a]
            }
        })
        .any(|o| {
            let v = if positive {
                s[a][j] - eps - s[a][o]
            } else {
                s[a][j] + eps - s[a][o]
            };
            v.abs() <= tol
        })
}

/// The multi-similarity loss in `f64` over the listed pairs and, per row, the sum of the
/// absolute coefficients `dL/ds` of the pairs it belongs to.
pub fn ms64(
    s: &[Vec<f64>],
    n: usize,
    pos: &[Pair],
    neg: &[Pair],
    p: &MultiSimilarityParams,
) -> (f64, Vec<f64>) {
    let (al, be, ba) = (f64::from(p.alpha), f64::from(p.beta), f64::from(p.base));
    let mut scale = vec![0.0; n];
    if pos.len() <= 1 && neg.len() <= 1 {
        return (0.0, scale);
    }
    let by_anchor = |list: &[Pair]| {
        let mut v = vec![Vec::new(); n];
        for q in list {
            v[q.anchor as usize].push(q.other as usize);
        }
        v
    };
    let (bp, bn) = (by_anchor(pos), by_anchor(neg));
    let mut loss = 0.0;
    for a in 0..n {
        for (list, k, sign) in [(&bp[a], -al, -1.0), (&bn[a], be, 1.0)] {
            let args: Vec<(usize, f64)> = list.iter().map(|&j| (j, k * (s[a][j] - ba))).collect();
            if args.is_empty() {
                continue;
            }
            let m = args.iter().map(|t| t.1).fold(0.0, f64::max);
            let z = (-m).exp() + args.iter().map(|t| (t.1 - m).exp()).sum::<f64>();
            loss += (m + z.ln()) / (sign * k);
            for &(j, t) in &args {
                let c = (t - m).exp() / z / n as f64;
                scale[a] += c;
                scale[j] += c;
            }
        }
    }
    (loss / n as f64, scale)
}

/// Loss and per-row gradient tolerances of the multi-similarity kernels against the
/// twin: a similarity error `e` moves each part by at most `e` (its weights sum to 1)
/// and each coefficient by a relative `2 (alpha + beta) e`; exponentials, sums and
/// logarithms add `(k + 16) 2^-22` relative; a factor of 4 on top.
pub fn ms_tolerances(
    x: &Matrix<'_>,
    pos: &[Pair],
    neg: &[Pair],
    p: &MultiSimilarityParams,
) -> (f64, Vec<f64>) {
    let (n, d) = (x.rows(), x.dim());
    let s = sims(x);
    let (loss, scale) = ms64(&s, n, pos, neg, p);
    let e = sim_tol(d);
    let (al, be) = (f64::from(p.alpha), f64::from(p.beta));
    let k = (n + pos.len() + neg.len() + d + 16) as f64 * 2.0 * EPS;
    let tl = 4.0 * (2.0 * e + k * (1.0 / al + 1.0 / be) + 8.0 * EPS * loss) + 1e-30;
    let tg = x
        .row_iter()
        .zip(&scale)
        .map(|(r, &sc)| {
            let nx = norm(r).max(1e-30);
            4.0 * (2.0 * (al + be) * e + k) * sc / nx + 1e-30
        })
        .collect();
    (tl, tg)
}

/// The contrastive bounds (those of `contrastive_loss`, per listed pair) of
/// `contrastive_loss_pairs(_grad)`: loss and per-row gradient tolerances, or `None` when
/// a term sits within the error bound of its kink.
pub fn contrastive_pairs_tolerances(
    x: &Matrix<'_>,
    metric: Metric,
    pos: &[Pair],
    neg: &[Pair],
    p: &ContrastiveParams,
) -> Option<(f64, Vec<f64>)> {
    let n = x.rows();
    let pr = Pairs::new(x, metric);
    let k = 4.0 * EPS * (x.dim() + 2 * (pos.len() + neg.len()) + 16) as f64;
    let idx = |q: &Pair| q.anchor as usize * n + q.other as usize;
    let (mut pa, mut na) = (0, 0);
    for (list, positive) in [(pos, true), (neg, false)] {
        for q in list {
            let (v, t, _) = term(p, positive, pr.d[idx(q)]);
            if v.abs() <= 4.0 * k * pr.sc[idx(q)] {
                return None;
            }
            let active = usize::from(t > 0.0);
            if positive {
                pa += active
            } else {
                na += active
            }
        }
    }
    let (wp, wn) = weights(p.reduction, pos.len(), pa, neg.len(), na);
    let mut loss = 1e-30;
    let mut row = vec![1e-30; n];
    for (list, positive, w) in [(pos, true, wp), (neg, false, wn)] {
        for q in list {
            let sc = pr.sc[idx(q)];
            let (_, t, s) = term(p, positive, pr.d[idx(q)]);
            let slope_err = if p.form == ContrastiveForm::Squared {
                2.0 * sc
            } else {
                0.0
            };
            loss += w * (t + s.abs() * sc);
            let gs = pr.gs[idx(q)].max(pr.gs[q.other as usize * n + q.anchor as usize]);
            row[q.anchor as usize] += 2.0 * w * (s.abs() + slope_err) * gs;
            row[q.other as usize] += 2.0 * w * (s.abs() + slope_err) * gs;
        }
    }
    Some((k * loss, row.into_iter().map(|r| k * r).collect()))
}
