//! Differential target: the variant losses against their scalar twins, on bounded
//! structured inputs: contrastive (`contrastive_loss(_grad)`), quadruplet
//! (`quadruplet_loss(_grad)`, `mine_quadruplets`), Proxy-NCA and Proxy-Anchor (loss and
//! both gradients).
//!
//! - Always: no panic; fast and twin return the same `Ok`/`Err`; an `Err` is the first
//!   failing condition of the documented order (bad parameter, index or proxy label out
//!   of range, non-finite data at its first position, data past the contrastive,
//!   quadruplet and mining range `|x_ik| sqrt(dim) <= 2^52` at its first largest
//!   element) and leaves every output untouched;
//!   the loss-only call agrees bit for bit with the one that writes gradients; garbage in
//!   outputs and workspace changes nothing; mining counts follow the label formula.
//! - Finite data: `mine_quadruplets` follows its rules exactly on the `f32` distance
//!   matrix of `pairwise_distances`; the proxy losses are finite whenever the docs say so.
//! - Accepted data with parameters far from `f32`'s overflow: losses and gradients
//!   within the tests' tolerances of the twin's (sums of absolute terms; the Euclidean
//!   gradients' relative to `|a - b|`, the difference being formed before it is scaled),
//!   away from hinge kinks, the normalisation clamp and distances in `f32`'s underflow
//!   range (Euclidean: below `2^-100` only, as such distances are recomputed from the
//!   scaled difference); integer data give the twin's quadruplets exactly, general floats
//!   quadruplets with equal distances.

#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use testkit::contrastive::{self, Pairs};
use testkit::proxy::Proxy;
use triplet_kernels::{
    contrastive_loss, contrastive_loss_grad, contrastive_loss_workspace_len, mine_quadruplets,
    mine_quadruplets_count, mine_quadruplets_workspace_len, pairwise_distances,
    pairwise_distances_workspace_len, quadruplet_loss, quadruplet_loss_grad,
    quadruplet_loss_workspace_len, scalar, ContrastiveForm, ContrastiveParams,
    ContrastiveReduction, Error, Hinge, Matrix, Metric, ProxyAnchorParams, ProxyNcaParams,
    Quadruplet, QuadrupletParams, Reduction,
};

/// Sum of the absolute terms behind a distance, with the underflow allowance folded in
/// (the tolerances multiply it by at least `4 * 16 * 2^-23`).
fn scale_u(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    dist_scale(metric, a, b) + underflow_allowance(metric, a.len()) / (4.0 * EPS)
}

/// Bound on the elements of `d d(a, b) / d a` as the kernels form them: the Euclidean
/// metrics form `a - b` first and scale it once, so their error scales with `|a - b|`.
fn grad_scale(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let (ia, ib) = (inf_norm(a), inf_norm(b));
    let diff = f64s(a)
        .zip(f64s(b))
        .fold(0.0_f64, |m, (u, v)| m.max((u - v).abs()));
    match metric {
        Metric::SquaredEuclidean => 2.0 * diff,
        Metric::Euclidean => {
            let d = dist64(metric, a, b);
            if d > 0.0 {
                diff / d
            } else {
                0.0
            }
        }
        Metric::Cosine => {
            let (na, nb) = (clamped(norm(a)), clamped(norm(b)));
            let d = dist64(metric, a, b);
            ib / (na * nb) + ((1.0 - d).abs() + dist_scale(metric, a, b)) * ia / (na * na)
        }
        _ => unreachable!("a variant this test does not know"),
    }
}

/// Whether the gradients of `metric` are comparable on these rows: no pair of distinct
/// rows at a squared Euclidean distance in the underflow range (a Euclidean distance
/// below `2^-100`: larger ones are recomputed from the scaled difference and keep their
/// accuracy), no norm at the cosine clamp.
fn grads_comparable(metric: Metric, xd: &[f32], d: usize) -> bool {
    let tiny = |a: &[f32], b: &[f32]| match metric {
        Metric::Euclidean => {
            let s = sq_dist(a, b);
            s > 0.0 && s < 2f64.powi(-200)
        }
        _ => tiny_pair(a, b),
    };
    match metric {
        Metric::Cosine => !near_clamp(xd, d, 1e-4),
        _ => {
            let rows: Vec<&[f32]> = xd.chunks(d).collect();
            !rows
                .iter()
                .enumerate()
                .any(|(i, a)| rows[i + 1..].iter().any(|b| tiny(a, b)))
        }
    }
}

fn max_sq_norm(xd: &[f32], d: usize) -> f64 {
    xd.chunks(d).map(sq_norm).fold(0.0, f64::max)
}

fn untouched(v: &[f32], g: f32) -> bool {
    v.iter().all(|x| x.to_bits() == g.to_bits())
}

/// Checks `fast` against `twin` for the outcome of a pair of calls: the same `Err`, the
/// first of `expected` (the documented order), or both `Ok` when `expected` is empty.
/// Returns whether both succeeded.
fn same_outcome<T: core::fmt::Debug>(
    fast: &Result<T, Error>,
    twin: &Result<T, Error>,
    expected: &[Error],
) -> bool {
    match (fast, twin) {
        (Ok(_), Ok(_)) => {
            assert!(expected.is_empty(), "Ok despite {expected:?}");
            true
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "fast and twin refuse differently");
            assert_eq!(Some(a), expected.first(), "not the first documented error");
            false
        }
        _ => panic!("fast {fast:?} vs twin {twin:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Contrastive.

fn contrastive_case(g: &mut Gen<'_>, regime: Regime, x: Matrix<'_>, xd: &[f32]) {
    let (n, d) = (x.rows(), x.dim());
    let classes = g.range(1, 5);
    let labels = g.labels(n, classes);
    let metric = g.metric();
    // Margins on the scale of the batch's distances, so that both parts are active.
    let med = {
        let mut all: Vec<f64> = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| dist64(metric, x.row(i).unwrap(), x.row(j).unwrap()))
            .collect();
        all.sort_by(f64::total_cmp);
        all.get(all.len() / 2)
            .copied()
            .filter(|v| v.is_finite() && *v > 0.0)
            .unwrap_or(1.0)
    };
    let (pm, nm) = if regime == Regime::Int {
        (g.range(0, 40) as f32, g.range(0, 200) as f32)
    } else {
        let (u, v) = (g.param(regime, 0.0, 1.5), g.param(regime, 0.5, 2.0));
        if g.bool() {
            ((f64::from(u) * med) as f32, (f64::from(v) * med) as f32)
        } else {
            (u, v)
        }
    };
    let form = [ContrastiveForm::Linear, ContrastiveForm::Squared][usize::from(g.byte() % 2)];
    let reduction = [
        ContrastiveReduction::MeanNonzeroPerPart,
        ContrastiveReduction::MeanPerPart,
        ContrastiveReduction::Mean,
        ContrastiveReduction::Sum,
    ][usize::from(g.byte() % 4)];
    let p = ContrastiveParams::new(pm, nm)
        .with_form(form)
        .with_reduction(reduction);
    let garbage = g.garbage();
    if dump() {
        eprintln!("contrastive: n {n} d {d} {metric:?} {p:?}\nx {xd:?}\nlabels {labels:?}");
    }

    let mut expected = Vec::new();
    if !pm.is_finite() {
        expected.push(invalid("pos_margin", DOMAIN_FINITE));
    }
    if !nm.is_finite() {
        expected.push(invalid("neg_margin", DOMAIN_FINITE));
    }
    expected.extend(data_error(xd, d, true));
    // One workspace for the fast kernel and its twin.
    let ws_len =
        contrastive_loss_workspace_len(n, d).max(scalar::contrastive_loss_workspace_len(n, d));
    let mut ws = vec![garbage; ws_len];
    let (mut gf, mut gs) = (vec![garbage; n * d], vec![garbage; n * d]);
    let lf = contrastive_loss_grad(x, &labels, metric, p, &mut gf, &mut ws);
    ws.fill(-garbage);
    let lf_only = contrastive_loss(x, &labels, metric, p, &mut ws);
    let ls = scalar::contrastive_loss_grad(x, &labels, metric, p, &mut gs, &mut ws);
    let ls_only = scalar::contrastive_loss(x, &labels, metric, p, &mut ws);
    let ok = same_outcome(&lf, &ls, &expected);
    assert_eq!(
        lf.map(f32::to_bits),
        lf_only.map(f32::to_bits),
        "loss-only call"
    );
    assert_eq!(
        ls.map(f32::to_bits),
        ls_only.map(f32::to_bits),
        "twin loss-only call"
    );
    if !ok {
        assert!(
            untouched(&gf, garbage) && untouched(&gs, garbage),
            "written on Err"
        );
        return;
    }
    let (lf, ls) = (lf.unwrap(), ls.unwrap());
    let mut again = vec![-garbage; n * d];
    ws.fill(garbage);
    let lf2 = contrastive_loss_grad(x, &labels, metric, p, &mut again, &mut ws).unwrap();
    assert_eq!(
        (lf.to_bits(), bits(&gf)),
        (lf2.to_bits(), bits(&again)),
        "garbage"
    );

    // Accepted data are in the range of the distance bounds.
    assert!(rows_in_range(xd, d), "accepted data past the range");
    // In range: distances, terms and the reduced loss far from overflow (the sums are in
    // f64: only the `Sum` total may exceed one term by more than a factor of 2).
    let dmax = match metric {
        Metric::SquaredEuclidean => 4.0 * max_sq_norm(xd, d),
        Metric::Euclidean => 2.0 * max_sq_norm(xd, d).sqrt(),
        Metric::Cosine => 2.0,
        _ => unreachable!("a variant this test does not know"),
    };
    let t = dmax + f64::from(pm).abs() + f64::from(nm).abs();
    let term = if form == ContrastiveForm::Squared {
        t * t
    } else {
        t
    };
    let terms = if reduction == ContrastiveReduction::Sum {
        (n * n) as f64
    } else {
        4.0
    };
    if terms * term > 1e36 {
        return;
    }
    assert!(
        lf.is_finite() && gf.iter().all(|v| v.is_finite()),
        "non-finite {lf}"
    );
    // The tests' tolerances, with the underflow allowance in each distance's scale and
    // the gradient scale of the difference `a - b`; `None` near a kink.
    let pairs = Pairs::with(&x, metric, scale_u, grad_scale);
    let Some((loss_tol, row_tol)) = contrastive::tolerances(d, &pairs, &labels, &p) else {
        return;
    };
    assert!(
        (f64::from(lf) - f64::from(ls)).abs() <= loss_tol,
        "{metric:?} {p:?}: loss fast {lf} scalar {ls} tol {loss_tol}"
    );
    if grads_comparable(metric, xd, d) {
        assert_close("contrastive grad", &gf, &gs, |k| row_tol[k / d]);
    }
}

// ---------------------------------------------------------------------------------------
// Quadruplet loss.

fn quadruplet_case(g: &mut Gen<'_>, regime: Regime, x: Matrix<'_>, xd: &[f32]) {
    let (n, d) = (x.rows(), x.dim());
    let count = g.range(0, 40);
    let quads: Vec<Quadruplet> = (0..count)
        .map(|_| {
            let mut q = [0_u32; 4];
            for v in &mut q {
                *v = if g.byte() < 3 {
                    g.u32()
                } else {
                    g.range(0, n - 1) as u32
                };
            }
            Quadruplet::from(q)
        })
        .collect();
    let metric = g.metric();
    let scale = {
        let r0 = x.row(0).unwrap();
        let m = x
            .row_iter()
            .map(|r| dist64(metric, r0, r))
            .fold(0.0, f64::max);
        if m > 0.0 && m.is_finite() {
            m as f32
        } else {
            1.0
        }
    };
    let (m1, m2) = if regime == Regime::Int {
        (
            (g.range(0, 60) as f32) - 20.0,
            (g.range(0, 60) as f32) - 20.0,
        )
    } else {
        let (u, v) = (g.param(regime, -0.5, 1.0), g.param(regime, -0.5, 1.0));
        if g.bool() {
            (u * scale, v * scale)
        } else {
            (u, v)
        }
    };
    let p = QuadrupletParams::new(m1, m2)
        .with_hinge(g.hinge())
        .with_reduction(g.reduction());
    let garbage = g.garbage();
    if dump() {
        eprintln!("quadruplet: n {n} d {d} {metric:?} {p:?}\nx {xd:?}\nquadruplets {quads:?}");
    }

    let mut expected = Vec::new();
    if !m1.is_finite() {
        expected.push(invalid("margin1", DOMAIN_FINITE));
    }
    if !m2.is_finite() {
        expected.push(invalid("margin2", DOMAIN_FINITE));
    }
    if let Some((position, index)) = quads
        .iter()
        .flat_map(|q| q.to_array())
        .enumerate()
        .find(|&(_, i)| i as usize >= n)
    {
        expected.push(Error::IndexOutOfRange {
            buffer: "quadruplets",
            position,
            index: index as usize,
            bound: n,
        });
    }
    expected.extend(data_error(xd, d, true));
    // One workspace for the fast kernel and its twin.
    let ws_len =
        quadruplet_loss_workspace_len(n, d).max(scalar::quadruplet_loss_workspace_len(n, d));
    let mut ws = vec![garbage; ws_len];
    let (mut gf, mut gs) = (vec![garbage; n * d], vec![garbage; n * d]);
    let lf = quadruplet_loss_grad(x, &quads, metric, p, &mut gf, &mut ws);
    let lf_only = quadruplet_loss(x, &quads, metric, p, &mut ws);
    let ls = scalar::quadruplet_loss_grad(x, &quads, metric, p, &mut gs, &mut ws);
    let ls_only = scalar::quadruplet_loss(x, &quads, metric, p, &mut ws);
    let ok = same_outcome(&lf, &ls, &expected);
    assert_eq!(
        lf.map(f32::to_bits),
        lf_only.map(f32::to_bits),
        "loss-only call"
    );
    assert_eq!(
        ls.map(f32::to_bits),
        ls_only.map(f32::to_bits),
        "twin loss-only call"
    );
    if !ok {
        assert!(
            untouched(&gf, garbage) && untouched(&gs, garbage),
            "written on Err"
        );
        return;
    }
    let (lf, ls) = (lf.unwrap(), ls.unwrap());
    let mut again = vec![-garbage; n * d];
    ws.fill(-garbage);
    let lf2 = quadruplet_loss_grad(x, &quads, metric, p, &mut again, &mut ws).unwrap();
    assert_eq!(
        (lf.to_bits(), bits(&gf)),
        (lf2.to_bits(), bits(&again)),
        "garbage"
    );

    let dmax = match metric {
        Metric::SquaredEuclidean => 4.0 * max_sq_norm(xd, d),
        Metric::Euclidean => 2.0 * max_sq_norm(xd, d).sqrt(),
        Metric::Cosine => 2.0,
        _ => unreachable!("a variant this test does not know"),
    };
    let term = 2.0 * (2.0 * dmax + f64::from(m1).abs() + f64::from(m2).abs());
    assert!(rows_in_range(xd, d), "accepted data past the range");
    // The sum is in f64: only the `Sum` total may exceed one term.
    let terms = if p.reduction == Reduction::Sum {
        (quads.len() + 1) as f64
    } else {
        2.0
    };
    if terms * term > 1e36 {
        return;
    }
    assert!(
        lf.is_finite() && gf.iter().all(|v| v.is_finite()),
        "non-finite {lf}"
    );
    // The tests' tolerances.
    let r = |i: usize| x.row(i).unwrap();
    let k = 4.0 * EPS * (d + quads.len() + 16) as f64;
    let margins = |q: &Quadruplet| {
        let [a, pp, n1, n2] = q.to_array().map(|v| v as usize);
        let pairs = [[a, pp], [a, n1], [n1, n2]];
        let dd = pairs.map(|[i, j]| dist64(metric, r(i), r(j)));
        let sc = pairs.map(|[i, j]| scale_u(metric, r(i), r(j)));
        (
            dd[0] - dd[1] + f64::from(m1),
            dd[0] - dd[2] + f64::from(m2),
            sc,
            pairs,
        )
    };
    let mut active = 0;
    for q in &quads {
        let (v1, v2, sc, _) = margins(q);
        let err = k * (sc[0] + sc[1] + sc[2]);
        if p.hinge == Hinge::Relu && (v1.abs() <= 4.0 * err || v2.abs() <= 4.0 * err) {
            return;
        }
        active += usize::from(p.hinge == Hinge::SoftPlus || v1 > 0.0 || v2 > 0.0);
    }
    let w = weight(p.reduction, quads.len(), active);
    let mut loss_tol = 1e-30;
    let mut row_tol = vec![1e-30; n];
    for q in &quads {
        let (v1, v2, sc, pairs) = margins(q);
        let vs = sc[0] + sc[1] + sc[2] + f64::from(m1.abs()) + f64::from(m2.abs());
        loss_tol += w * (hinge64(p.hinge, v1) + hinge64(p.hinge, v2) + 2.0 * vs);
        let soft = if p.hinge == Hinge::SoftPlus {
            0.5 * vs
        } else {
            0.0
        };
        let (s1, s2) = (slope64(p.hinge, v1) + soft, slope64(p.hinge, v2) + soft);
        for ([i, j], c) in pairs.into_iter().zip([s1 + s2, s1, s2]) {
            if i != j {
                row_tol[i] += w * c * grad_scale(metric, r(i), r(j));
                row_tol[j] += w * c * grad_scale(metric, r(j), r(i));
            }
        }
    }
    let loss_tol = k * loss_tol;
    assert!(
        (f64::from(lf) - f64::from(ls)).abs() <= loss_tol,
        "{metric:?} {p:?}: loss {lf} vs {ls}, tol {loss_tol}"
    );
    if grads_comparable(metric, xd, d) {
        assert_close("quadruplet grad", &gf, &gs, |e| k * row_tol[e / d]);
    }
}

// ---------------------------------------------------------------------------------------
// Quadruplet mining.

fn count_by_formula(labels: &[u32]) -> usize {
    let mut distinct = labels.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 3 {
        return 0;
    }
    (0..labels.len())
        .filter(|&i| (0..labels.len()).any(|j| j != i && labels[j] == labels[i]))
        .count()
}

/// The documented rules on a distance matrix.
fn quad_rules(dist: &[f32], labels: &[u32]) -> Vec<Quadruplet> {
    let n = labels.len();
    if count_by_formula(labels) == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for a in 0..n {
        let row = &dist[a * n..(a + 1) * n];
        let Some(p) = extreme(
            row,
            (0..n).filter(|&j| j != a && labels[j] == labels[a]),
            true,
        ) else {
            continue;
        };
        let n1 = extreme(row, (0..n).filter(|&j| labels[j] != labels[a]), false).unwrap();
        let row1 = &dist[n1 * n..(n1 + 1) * n];
        let n2 = extreme(
            row1,
            (0..n).filter(|&j| labels[j] != labels[a] && labels[j] != labels[n1]),
            false,
        )
        .unwrap();
        out.push(Quadruplet::new(a as u32, p as u32, n1 as u32, n2 as u32));
    }
    out
}

fn mining_case(g: &mut Gen<'_>, regime: Regime, x: Matrix<'_>, xd: &[f32]) {
    let (n, d) = (x.rows(), x.dim());
    let classes = g.range(1, 6);
    let labels = g.labels(n, classes);
    let metric = g.metric();
    let garbage = g.garbage();
    if dump() {
        eprintln!("mine_quadruplets: n {n} d {d} {metric:?}\nx {xd:?}\nlabels {labels:?}");
    }
    let count = mine_quadruplets_count(&labels).unwrap();
    assert_eq!(count, count_by_formula(&labels));
    let sentinel = Quadruplet::new(9, 9, 9, 9);
    let mut ws = vec![garbage; mine_quadruplets_workspace_len(n, d)];
    let (mut f, mut s) = (vec![sentinel; count + 2], vec![sentinel; count + 2]);
    let rf = mine_quadruplets(x, &labels, metric, &mut f, &mut ws);
    ws.fill(-garbage);
    let rs = scalar::mine_quadruplets(x, &labels, metric, &mut s, &mut ws);
    let expected: Vec<Error> = data_error(xd, d, true).into_iter().collect();
    if !same_outcome(&rf, &rs, &expected) {
        assert!(f.iter().chain(&s).all(|q| *q == sentinel), "written on Err");
        return;
    }
    assert_eq!((rf, rs), (Ok(count), Ok(count)));
    assert_eq!(&f[count..], &[sentinel; 2], "past the count");
    assert_eq!(&s[count..], &[sentinel; 2], "past the count (twin)");
    f.truncate(count);
    s.truncate(count);
    // The rules, exactly, on the distances the fast kernel decides on: those of
    // `pairwise_distances`, with Euclidean values that the Gram form gets inexactly
    // recomputed directly. Both forms are exact, and so equal to these, for cosine (no
    // fix-up) and on integer data with squared norms below 2^24; elsewhere the value
    // checks below hold the choices to the distance bound.
    let mut dist = vec![0.0_f32; n * n];
    let mut pws = vec![0.0_f32; pairwise_distances_workspace_len(n, d)];
    pairwise_distances(x, metric, &mut dist, &mut pws).unwrap();
    let exact_data = gram_exact(xd, d);
    if (metric == Metric::Cosine || exact_data) && dist.iter().all(|v| !v.is_nan()) {
        assert_eq!(f, quad_rules(&dist, &labels), "rules on the f32 distances");
    }
    for q in f.iter().chain(&s) {
        let [a, p, n1, n2] = q.to_array().map(|v| v as usize);
        assert!(p != a && labels[p] == labels[a]);
        assert!(labels[n1] != labels[a]);
        assert!(labels[n2] != labels[a] && labels[n2] != labels[n1]);
    }
    assert!(rows_in_range(xd, d), "accepted data past the range");
    if regime == Regime::Int && metric != Metric::Cosine {
        assert_eq!(f, s, "integer data: identical quadruplets");
        return;
    }
    let r = |i: u32| x.row(i as usize).unwrap();
    let tol = |i: u32, j: u32| 2.0 * dist_tol(metric, r(i), r(j));
    let same = |i, j, k, l| {
        (dist64(metric, r(i), r(j)) - dist64(metric, r(k), r(l))).abs() <= tol(i, j) + tol(k, l)
    };
    for (qf, qs) in f.iter().zip(&s) {
        assert_eq!(qf.anchor, qs.anchor);
        assert!(
            same(qf.anchor, qf.positive, qs.anchor, qs.positive),
            "{qf:?} vs {qs:?}"
        );
        assert!(
            same(qf.anchor, qf.negative1, qs.anchor, qs.negative1),
            "{qf:?} vs {qs:?}"
        );
        if qf.negative1 == qs.negative1 {
            assert!(
                same(qf.negative1, qf.negative2, qs.negative1, qs.negative2),
                "{qf:?} vs {qs:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Proxy losses.

/// What the fuzz target checks of a proxy loss beyond the shared dispatch and tolerances.
trait Rules: Copy {
    fn param_errors(self) -> Vec<Error>;
    fn exact_loss_representable(self, n: usize, c: usize) -> bool;
    fn finite_promised(self, n: usize, c: usize) -> bool;
    fn sum_may_overflow(self, n: usize, c: usize) -> bool;
    fn sum_issue(self) -> &'static str;
    fn moderate(self) -> bool;
}

impl Rules for Proxy {
    /// The documented parameter errors, in order.
    fn param_errors(self) -> Vec<Error> {
        let mut e = Vec::new();
        match self {
            Proxy::Nca(q) => {
                if !(q.softmax_scale.is_finite() && q.softmax_scale > 0.0) {
                    e.push(invalid("softmax_scale", DOMAIN_POSITIVE));
                }
            }
            Proxy::Anchor(q) => {
                if !q.margin.is_finite() {
                    e.push(invalid("margin", DOMAIN_FINITE));
                }
                if !(q.alpha.is_finite() && q.alpha > 0.0) {
                    e.push(invalid("alpha", DOMAIN_POSITIVE));
                }
            }
        }
        e
    }

    /// Whether the exact loss of finite data is below `f32::MAX` (with room): Proxy-NCA's
    /// is at most `4 s + ln C` per row, Proxy-Anchor's at most
    /// `2 (alpha (1 + |margin|) + ln(n + 1))`.
    fn exact_loss_representable(self, n: usize, c: usize) -> bool {
        let bound = match self {
            Proxy::Nca(q) => 4.0 * f64::from(q.softmax_scale) + (c as f64).ln(),
            Proxy::Anchor(q) => {
                2.0 * (f64::from(q.alpha) * (1.0 + f64::from(q.margin).abs())
                    + (n as f64 + 1.0).ln())
            }
        };
        bound < 0.99 * f64::from(f32::MAX)
    }

    /// Whether the docs promise a finite loss for finite data: whenever `4 s` is finite
    /// (Proxy-NCA); for Proxy-Anchor the docs say whenever `alpha (1 + |margin|)` is, which
    /// the exact loss itself contradicts (it reaches about twice that), so the exact bound
    /// is used instead.
    fn finite_promised(self, n: usize, c: usize) -> bool {
        match self {
            Proxy::Nca(q) => (4.0 * q.softmax_scale).is_finite(),
            Proxy::Anchor(_) => self.exact_loss_representable(n, c),
        }
    }

    /// Whether the fast kernel's `f32` sums of per-row (Proxy-NCA) or per-proxy
    /// (Proxy-Anchor) terms may overflow before the division by their count although the
    /// mean is representable: the known issues `nca-sum-overflow` and
    /// `anchor-sum-overflow`.
    fn sum_may_overflow(self, n: usize, c: usize) -> bool {
        let sum = match self {
            Proxy::Nca(q) => n as f64 * (4.0 * f64::from(q.softmax_scale) + (c as f64).ln()),
            Proxy::Anchor(q) => {
                c as f64
                    * (f64::from(q.alpha) * (1.0 + f64::from(q.margin).abs())
                        + (n as f64 + 1.0).ln())
            }
        };
        sum >= 0.5 * f64::from(f32::MAX)
    }

    fn sum_issue(self) -> &'static str {
        match self {
            Proxy::Nca(_) => "nca-sum-overflow",
            Proxy::Anchor(_) => "anchor-sum-overflow",
        }
    }

    /// Parameters of moderate size, where the tests' tolerances apply.
    fn moderate(self) -> bool {
        match self {
            Proxy::Nca(q) => q.softmax_scale <= 100.0,
            Proxy::Anchor(q) => q.alpha <= 100.0 && q.margin.abs() <= 10.0,
        }
    }
}

fn proxy_case(g: &mut Gen<'_>, regime: Regime, x: Matrix<'_>, xd: &[f32]) {
    let (n, d) = (x.rows(), x.dim());
    let c = g.size(1, 9);
    let pd = g.values(regime, c * d);
    let proxies = Matrix::new(&pd, c, d).unwrap();
    let labels: Vec<u32> = (0..n)
        .map(|_| {
            if g.byte() < 2 {
                g.u32() | c as u32
            } else {
                g.range(0, c - 1) as u32
            }
        })
        .collect();
    let which = if g.bool() {
        Proxy::Nca(ProxyNcaParams::new(g.param(regime, 0.05, 40.0)))
    } else {
        Proxy::Anchor(ProxyAnchorParams::new(
            g.param(regime, -0.5, 0.5),
            g.param(regime, 0.5, 64.0),
        ))
    };
    let garbage = g.garbage();
    if dump() {
        eprintln!(
            "proxy: n {n} c {c} d {d} {which:?}\nx {xd:?}\nlabels {labels:?}\nproxies {pd:?}"
        );
    }

    let mut expected = which.param_errors();
    if let Some((position, &l)) = labels.iter().enumerate().find(|&(_, &l)| l as usize >= c) {
        expected.push(Error::IndexOutOfRange {
            buffer: "labels",
            position,
            index: l as usize,
            bound: c,
        });
    }
    expected.extend(non_finite("x", xd, d));
    expected.extend(non_finite("proxies", &pd, d));
    let mut ws = vec![garbage; which.ws_len(n, c, d)];
    let (mut gf, mut gpf) = (vec![garbage; n * d], vec![garbage; c * d]);
    let (mut gs, mut gps) = (vec![garbage; n * d], vec![garbage; c * d]);
    let lf = which.grad(true, x, &labels, proxies, &mut gf, &mut gpf, &mut ws);
    ws.fill(-garbage);
    let lf_only = which.loss(true, x, &labels, proxies, &mut ws);
    let ls = which.grad(false, x, &labels, proxies, &mut gs, &mut gps, &mut ws);
    let ls_only = which.loss(false, x, &labels, proxies, &mut ws);
    let ok = same_outcome(&lf, &ls, &expected);
    assert_eq!(
        lf.map(f32::to_bits),
        lf_only.map(f32::to_bits),
        "loss-only call"
    );
    assert_eq!(
        ls.map(f32::to_bits),
        ls_only.map(f32::to_bits),
        "twin loss-only call"
    );
    if !ok {
        assert!(
            [&gf, &gpf, &gs, &gps].iter().all(|v| untouched(v, garbage)),
            "written on Err"
        );
        return;
    }
    let (lf, ls) = (lf.unwrap(), ls.unwrap());
    let (mut g2, mut gp2) = (vec![-garbage; n * d], vec![-garbage; c * d]);
    ws.fill(garbage);
    let lf2 = which
        .grad(true, x, &labels, proxies, &mut g2, &mut gp2, &mut ws)
        .unwrap();
    assert_eq!(
        (lf.to_bits(), bits(&gf), bits(&gpf)),
        (lf2.to_bits(), bits(&g2), bits(&gp2)),
        "garbage"
    );
    let finite_data = first_non_finite(xd).is_none() && first_non_finite(&pd).is_none();
    if finite_data && which.finite_promised(n, c) {
        if !(known(which.sum_issue()) && which.sum_may_overflow(n, c)) {
            assert!(
                lf.is_finite(),
                "{which:?}: loss {lf} not finite (twin {ls})"
            );
        }
        if which.exact_loss_representable(n, c) {
            assert!(ls.is_finite(), "{which:?}: twin loss {ls} not finite");
        }
    }
    if !rows_in_range(xd, d) || !rows_in_range(&pd, d) || !which.moderate() {
        return;
    }
    assert!(
        gf.iter().chain(&gpf).all(|v| v.is_finite()),
        "{which:?}: non-finite gradient"
    );
    let (lt, rt, pt) = which.tolerances(n, c, d);
    assert!(
        (f64::from(lf) - f64::from(ls)).abs() <= lt,
        "{which:?}: loss {lf} vs {ls}, tol {lt}"
    );
    if near_clamp(xd, d, 1e-4) || near_clamp(&pd, d, 1e-4) {
        return;
    }
    let rn: Vec<f64> = x.row_iter().map(|r| clamped(norm(r))).collect();
    let pn: Vec<f64> = proxies.row_iter().map(|r| clamped(norm(r))).collect();
    assert_close(&format!("{which:?} grad"), &gf, &gs, |k| {
        rt / rn[k / d] + 1e-30
    });
    assert_close(&format!("{which:?} grad_proxies"), &gpf, &gps, |k| {
        pt / pn[k / d] + 1e-30
    });
}

/// ArcFace / CosFace: fast against twin, errors in the documented order with nothing
/// written, garbage-independent, and within [`testkit::bounds::face_tolerances`] where the
/// rows are moderate and no ArcFace target cosine sits near `+-1` (where `f'` blows up).
fn face_case(g: &mut Gen<'_>, regime: Regime, x: Matrix<'_>, xd: &[f32]) {
    use triplet_kernels::{
        arcface_loss, arcface_loss_grad, arcface_loss_workspace_len, cosface_loss,
        cosface_loss_grad, scalar, ArcFaceParams, CosFaceParams,
    };
    let (n, d) = (x.rows(), x.dim());
    let c = g.size(1, 9);
    let wd = g.values(regime, c * d);
    let w = Matrix::new(&wd, c, d).unwrap();
    let labels: Vec<u32> = (0..n)
        .map(|_| {
            if g.byte() < 2 {
                g.u32() | c as u32
            } else {
                g.range(0, c - 1) as u32
            }
        })
        .collect();
    let arc = g.bool();
    let margin = g.param(regime, 0.0, if arc { 179.0 } else { 1.0 });
    let scale = g.param(regime, 0.5, 64.0);
    let garbage = g.garbage();
    if dump() {
        eprintln!("face: n {n} c {c} d {d} arc {arc} margin {margin} scale {scale}\nx {xd:?}\nlabels {labels:?}\nw {wd:?}");
    }
    let mut expected = Vec::new();
    if arc && !(margin.is_finite() && (0.0..180.0).contains(&margin)) {
        expected.push(Error::InvalidParameter {
            name: "margin_degrees",
            expected: "finite, in [0, 180)",
        });
    }
    if !arc && !margin.is_finite() {
        expected.push(Error::InvalidParameter {
            name: "margin",
            expected: "finite",
        });
    }
    if !(scale.is_finite() && scale > 0.0) {
        expected.push(Error::InvalidParameter {
            name: "scale",
            expected: "finite and > 0",
        });
    }
    if let Some((position, &l)) = labels.iter().enumerate().find(|&(_, &l)| l as usize >= c) {
        expected.push(Error::IndexOutOfRange {
            buffer: "labels",
            position,
            index: l as usize,
            bound: c,
        });
    }
    expected.extend(non_finite("x", xd, d));
    expected.extend(non_finite("proxies", &wd, d));
    let len = arcface_loss_workspace_len(n, c, d).max(scalar::arcface_loss_workspace_len(n, c, d));
    let mut ws = vec![garbage; len];
    let (ap, cp) = (
        ArcFaceParams::new(margin, scale),
        CosFaceParams::new(margin, scale),
    );
    let run = |fast: bool, g: &mut [f32], gw: &mut [f32], ws: &mut [f32]| match (arc, fast) {
        (true, true) => arcface_loss_grad(x, &labels, w, ap, g, gw, ws),
        (true, false) => scalar::arcface_loss_grad(x, &labels, w, ap, g, gw, ws),
        (false, true) => cosface_loss_grad(x, &labels, w, cp, g, gw, ws),
        (false, false) => scalar::cosface_loss_grad(x, &labels, w, cp, g, gw, ws),
    };
    let (mut gf, mut gwf) = (vec![garbage; n * d], vec![garbage; c * d]);
    let (mut gs, mut gws) = (vec![garbage; n * d], vec![garbage; c * d]);
    let lf = run(true, &mut gf, &mut gwf, &mut ws);
    ws.fill(-garbage);
    let lf_only = if arc {
        arcface_loss(x, &labels, w, ap, &mut ws)
    } else {
        cosface_loss(x, &labels, w, cp, &mut ws)
    };
    let ls = run(false, &mut gs, &mut gws, &mut ws);
    let ok = same_outcome(&lf, &ls, &expected);
    assert_eq!(
        lf.map(f32::to_bits),
        lf_only.map(f32::to_bits),
        "loss-only call"
    );
    if !ok {
        assert!(
            [&gf, &gwf, &gs, &gws].iter().all(|v| untouched(v, garbage)),
            "written on Err"
        );
        return;
    }
    let (lf, ls) = (lf.unwrap(), ls.unwrap());
    let (mut g2, mut gw2) = (vec![-garbage; n * d], vec![-garbage; c * d]);
    ws.fill(garbage);
    let lf2 = run(true, &mut g2, &mut gw2, &mut ws).unwrap();
    assert_eq!(
        (lf.to_bits(), bits(&gf), bits(&gwf)),
        (lf2.to_bits(), bits(&g2), bits(&gw2)),
        "garbage"
    );
    if !rows_in_range(xd, d) || !rows_in_range(&wd, d) || scale > 100.0 || margin.abs() > 180.0 {
        return;
    }
    assert!(lf.is_finite(), "face loss {lf} not finite (twin {ls})");
    if near_clamp(xd, d, 1e-4) || near_clamp(&wd, d, 1e-4) {
        return;
    }
    // The largest |cos| of a row with its target, in f64.
    let cmax = x
        .row_iter()
        .zip(&labels)
        .map(|(xi, &t)| {
            let wt = w.row(t as usize).unwrap();
            let dot: f64 = xi
                .iter()
                .zip(wt)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            (dot / (clamped(norm(xi)) * clamped(norm(wt)))).abs()
        })
        .fold(0.0, f64::max);
    let slope = if arc {
        if cmax > 0.99 {
            return;
        }
        1.0 + 1.0 / (1.0 - cmax * cmax).sqrt()
    } else {
        1.0
    };
    let (lt, rt, pt) = testkit::bounds::face_tolerances(scale, slope, n, c, d);
    assert!(
        (f64::from(lf) - f64::from(ls)).abs() <= lt,
        "face loss {lf} vs {ls}, tol {lt}"
    );
    let rn: Vec<f64> = x.row_iter().map(|r| clamped(norm(r))).collect();
    let pn: Vec<f64> = w.row_iter().map(|r| clamped(norm(r))).collect();
    assert_close("face grad", &gf, &gs, |k| rt / rn[k / d] + 1e-30);
    assert_close("face grad_weights", &gwf, &gws, |k| pt / pn[k / d] + 1e-30);
}

// ---------------------------------------------------------------------------------------
// NT-Xent, InfoNCE, SupCon.

fn nce_case(g: &mut Gen<'_>, regime: Regime, x: Matrix<'_>, xd: &[f32]) {
    use triplet_kernels::{
        infonce_loss, infonce_loss_grad, infonce_loss_workspace_len, ntxent_loss, ntxent_loss_grad,
        ntxent_loss_workspace_len, supcon_loss, supcon_loss_grad, NceLoss, NtXentParams,
        SupConParams,
    };
    let (n, d) = (x.rows(), x.dim());
    let kind = g.byte() % 3; // 0 NT-Xent, 1 InfoNCE, 2 SupCon
    let classes = g.size(1, 9);
    let labels = g.labels(n, classes);
    let m = if kind == 1 { g.size(1, 33) } else { 0 };
    let yd = g.values(regime, m * d);
    let y_labels = g.labels(m, classes + 1);
    let t = g.param(regime, 0.02, 2.0);
    let textbook = g.bool();
    let garbage = g.garbage();
    if dump() {
        eprintln!("nce: kind {kind} n {n} m {m} d {d} t {t} textbook {textbook}\nx {xd:?}\nlabels {labels:?}\ny {yd:?}\ny_labels {y_labels:?}");
    }
    let mut expected = Vec::new();
    if !(t.is_finite() && t > 0.0 && (1.0 / t).is_finite()) {
        expected.push(invalid(
            "temperature",
            "finite and > 0, with a finite inverse",
        ));
    }
    expected.extend(non_finite("x", xd, d));
    if kind == 1 {
        expected.extend(non_finite("y", &yd, d));
    }
    let nt = if textbook {
        NtXentParams::new(t).textbook()
    } else {
        NtXentParams::new(t)
    };
    let sc = if textbook {
        SupConParams::new(t).textbook()
    } else {
        SupConParams::new(t)
    };
    let len = if kind == 1 {
        infonce_loss_workspace_len(n, m, d).max(scalar::infonce_loss_workspace_len(n, m, d))
    } else {
        ntxent_loss_workspace_len(n, d).max(scalar::ntxent_loss_workspace_len(n, d))
    };
    let mut ws = vec![garbage; len];
    let y = (m > 0).then(|| Matrix::new(&yd, m, d).unwrap());
    let run =
        |fast: bool, gx: &mut [f32], gy: &mut [f32], ws: &mut [f32]| -> Result<NceLoss, Error> {
            match (kind, y, fast) {
                (1, Some(y), true) => infonce_loss_grad(x, &labels, y, &y_labels, nt, gx, gy, ws),
                (1, Some(y), false) => {
                    scalar::infonce_loss_grad(x, &labels, y, &y_labels, nt, gx, gy, ws)
                }
                (2, _, true) => supcon_loss_grad(x, &labels, sc, gx, ws),
                (2, _, false) => scalar::supcon_loss_grad(x, &labels, sc, gx, ws),
                (_, _, true) => ntxent_loss_grad(x, &labels, nt, gx, ws),
                (_, _, false) => scalar::ntxent_loss_grad(x, &labels, nt, gx, ws),
            }
        };
    let (mut gf, mut gyf) = (vec![garbage; n * d], vec![garbage; m * d]);
    let (mut gs, mut gys) = (vec![garbage; n * d], vec![garbage; m * d]);
    let lf = run(true, &mut gf, &mut gyf, &mut ws);
    ws.fill(-garbage);
    let lf_only = match (kind, y) {
        (1, Some(y)) => infonce_loss(x, &labels, y, &y_labels, nt, &mut ws),
        (2, _) => supcon_loss(x, &labels, sc, &mut ws),
        _ => ntxent_loss(x, &labels, nt, &mut ws),
    };
    let ls = run(false, &mut gs, &mut gys, &mut ws);
    let ok = same_outcome(&lf, &ls, &expected);
    assert_eq!(
        lf.map(|o| (o.loss.to_bits(), o.num_terms)),
        lf_only.map(|o| (o.loss.to_bits(), o.num_terms)),
        "loss-only call"
    );
    if !ok {
        assert!(
            [&gf, &gyf, &gs, &gys].iter().all(|v| untouched(v, garbage)),
            "written on Err"
        );
        return;
    }
    let (lf, ls) = (lf.unwrap(), ls.unwrap());
    let (mut g2, mut gy2) = (vec![-garbage; n * d], vec![-garbage; m * d]);
    ws.fill(garbage);
    let lf2 = run(true, &mut g2, &mut gy2, &mut ws).unwrap();
    assert_eq!(
        (lf.loss.to_bits(), bits(&gf), bits(&gyf)),
        (lf2.loss.to_bits(), bits(&g2), bits(&gy2)),
        "garbage"
    );
    if !rows_in_range(xd, d) || !rows_in_range(&yd, d) || !(0.01..=100.0).contains(&t) {
        return;
    }
    assert!(
        lf.loss.is_finite() && gf.iter().chain(&gyf).all(|v| v.is_finite()),
        "nce loss {} not finite (twin {})",
        lf.loss,
        ls.loss
    );
    // SupCon counts the rows with a positive, not the rounded sign of their loss, so the
    // counts agree exactly.
    assert_eq!(lf.num_terms, ls.num_terms, "nce terms");
    if near_clamp(xd, d, 1e-4) || near_clamp(&yd, d, 1e-4) {
        return;
    }
    // As tests/nce.rs: cosines within (d + 12) 2^-24, amplified by 1 / T; sums of
    // max(n, m) terms; gradients relative to their largest element, with a floor.
    let mm = n.max(m) as f64;
    let k = 8.0 * EPS / 2.0 * (4.0 * (d as f64 + 12.0) / f64::from(t) + mm + d as f64 + 32.0);
    let lt = k * (1.0 + f64::from(ls.loss).abs());
    assert!(
        (f64::from(lf.loss) - f64::from(ls.loss)).abs() <= lt,
        "nce loss {} vs {}, tol {lt}",
        lf.loss,
        ls.loss
    );
    let gmax = gs
        .iter()
        .chain(&gys)
        .fold(0.0_f64, |a, &v| a.max(f64::from(v).abs()));
    let rmin = xd
        .chunks(d)
        .chain(yd.chunks(d))
        .map(|r| clamped(norm(r)))
        .fold(f64::INFINITY, f64::min);
    let gt = 4.0 * k * gmax + k / f64::from(t) / rmin + 1e-30;
    assert_close("nce grad", &gf, &gs, |_| gt);
    assert_close("nce grad_y", &gyf, &gys, |_| gt);
}

fuzz_target!(|data: &[u8]| {
    let mut g = Gen::new(data);
    let family = g.byte() % 6;
    let regime = g.regime();
    let n = g.size(1, 33);
    let d = g.size(1, 67);
    let xd = g.values(regime, n * d);
    let x = Matrix::new(&xd, n, d).unwrap();
    match family {
        0 => contrastive_case(&mut g, regime, x, &xd),
        1 => quadruplet_case(&mut g, regime, x, &xd),
        2 => mining_case(&mut g, regime, x, &xd),
        3 => proxy_case(&mut g, regime, x, &xd),
        4 => face_case(&mut g, regime, x, &xd),
        _ => nce_case(&mut g, regime, x, &xd),
    }
});
