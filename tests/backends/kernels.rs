//! The kernels beyond the distance matrices, under every backend: each test runs its
//! checks once per backend that `Backend::available()` lists (forced with `set_backend`)
//! and compares the result with the scalar twin within the kernel's documented bound.
//!
//! They reach the SIMD helpers that only these kernels use: batch-all's relu groups,
//! coefficient symmetrisation and GEMM (its loss and gradient), the argmin/argmax and the
//! tiles of the mining sweeps (batch-hard, semi-hard, `hardest_pairs`, `mine_triplets`,
//! `mine_quadruplets`), and the pair kernels of contrastive, quadruplet, the proxy
//! losses, the face heads (ArcFace, CosFace: their softmax rows and weight products),
//! `knn`, `retrieval_metrics`, the explicit-triplet loss and the row kernels.
//! Shapes cross several register tiles and leave remainders for every lane count (8 and
//! 16): `n` 37, 70 and 45 by `d` 19, 33 and 67 (`d = 67` fills whole GEMM column blocks
//! of the widest backend), and `n = 261`, past one 256-row tile of the batch-hard sweep
//! and one block of the row-wise minings. Each shape comes with small-integer data, on
//! which Euclidean distances are exact and mining must equal the twin's, and with
//! real-valued data, on which a choice may differ only between candidates within the
//! distance bound.
//!
//! The bounds are those the kernels' `# Numerics` sections state and the per-kernel test
//! files check, from the same tolerance models (the `testkit` crate).

use super::{check_row_kernels, on_every_backend};
use triplet_kernels::{
    arcface_loss, arcface_loss_grad, arcface_loss_workspace_len, contrastive_loss,
    contrastive_loss_grad, contrastive_loss_workspace_len, cosface_loss, cosface_loss_grad,
    hardest_pairs, knn, knn_workspace_len, mine_quadruplets, mine_quadruplets_count,
    mine_quadruplets_workspace_len, mine_triplets, mine_triplets_count,
    mine_triplets_workspace_len, quadruplet_loss, quadruplet_loss_grad,
    quadruplet_loss_workspace_len, retrieval_metrics, retrieval_metrics_workspace_len, scalar,
    triplet_margin_loss, triplet_margin_loss_grad, triplet_margin_loss_workspace_len,
    ArcFaceParams, Backend, BatchParams, ContrastiveForm, ContrastiveParams, ContrastiveReduction,
    CosFaceParams, Hinge, Matrix, Metric, Mining, ProxyAnchorParams, ProxyNcaParams, Quadruplet,
    QuadrupletParams, Reduction, Triplet, TripletParams, NO_INDEX,
};

use testkit::bounds::{assert_proxy_close, face_tolerances, max_target_cos};
use testkit::contrastive::{self, Pairs};
use testkit::proxy::Proxy;
use testkit::quadruplet;
use testkit::rows::{dist64, dist_scale};
use testkit::runs::batch_run;
use testkit::triplet_def::{
    bounds, dist_scale as tdist_scale, eval_triplet, idx3, mined, row, Allow, Bounds, Eval,
};
use testkit::{assert_close, bits, to64, EPS, METRICS, U};

const SHAPES: [(usize, usize); 3] = [(37, 19), (70, 33), (45, 67)];

// ---------------------------------------------------------------------------------------
// Data.

/// A labelled batch: `n x d` data, about seven interleaved classes.
struct Batch {
    n: usize,
    d: usize,
    data: Vec<f32>,
    labels: Vec<u32>,
    /// Small integers: Euclidean distances are exact in `f32`.
    ints: bool,
}

impl Batch {
    fn x(&self) -> Matrix<'_> {
        Matrix::new(&self.data, self.n, self.d).unwrap()
    }

    fn name(&self) -> String {
        let kind = if self.ints { "integer" } else { "real" };
        format!("n {} d {} {kind}", self.n, self.d)
    }

    /// Whether the twin's decisions must be reproduced exactly under `metric`.
    fn exact(&self, metric: Metric) -> bool {
        self.ints && metric != Metric::Cosine
    }
}

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Values in `[-2, 2)`, or integers in `-8..=8`.
pub(super) fn values(len: usize, seed: u64, ints: bool) -> Vec<f32> {
    let mut next = xorshift(seed);
    (0..len)
        .map(|_| {
            let r = next();
            if ints {
                (r % 17) as f32 - 8.0
            } else {
                (r >> 40) as f32 / (1u64 << 22) as f32 - 2.0
            }
        })
        .collect()
}

/// Every shape, with real and with integer data.
fn batches() -> Vec<Batch> {
    let mut out = Vec::new();
    for (k, &(n, d)) in SHAPES.iter().enumerate() {
        for ints in [false, true] {
            out.push(Batch {
                n,
                d,
                data: values(n * d, 0x9e37_79b9 + k as u64, ints),
                labels: (0..n as u32).map(|i| (i * 5 % 7) * 31 + 3).collect(),
                ints,
            });
        }
    }
    out
}

/// The miners' accuracy for one distance (`crate::mining`, "distances and their
/// accuracy"): `(8 d + 16) 2^-24` relative for the Euclidean metrics, `(2 d + 10) 2^-24`
/// absolute for cosine; twice that, for the twin's rounding and safety.
fn mining_tol(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let d = a.len() as f64;
    2.0 * match metric {
        Metric::Cosine => (2.0 * d + 10.0) * U,
        m => (8.0 * d + 16.0) * U * dist64(m, a, b),
    } + 1e-30
}

// ---------------------------------------------------------------------------------------
// Mining.

/// `hardest_pairs` against its definition: each chosen positive is the farthest, each
/// negative the nearest, up to the distance bound; [`NO_INDEX`] exactly where the anchor
/// has no candidate; equal to the twin's on exact data.
fn check_hardest(b: &Batch, twin: &MinedTwin, backend: Backend) -> (Vec<u32>, Vec<u32>) {
    let (x, labels, n, metric) = (b.x(), &b.labels, b.n, twin.metric);
    let mut ws = vec![f32::NAN; mine_triplets_workspace_len(n, b.d)];
    let (mut pf, mut nf) = (vec![7_u32; n], vec![7_u32; n]);
    hardest_pairs(x, labels, metric, &mut pf, &mut nf, &mut ws).unwrap();
    let (pt, nt) = &twin.hardest;
    let what = format!("{} hardest_pairs {metric:?} {}", backend.name(), b.name());
    if b.exact(metric) {
        assert_eq!((&pf, &nf), (pt, nt), "{what}");
    }
    let r = |i: u32| x.row(i as usize).unwrap();
    for a in 0..n {
        for (got, want, far) in [(pf[a], pt[a], true), (nf[a], nt[a], false)] {
            assert_eq!(got == NO_INDEX, want == NO_INDEX, "{what}: anchor {a}");
            if got == want || got == NO_INDEX {
                continue;
            }
            let ra = x.row(a).unwrap();
            let (dg, dw) = (dist64(metric, ra, r(got)), dist64(metric, ra, r(want)));
            let tol = mining_tol(metric, ra, r(got)) + mining_tol(metric, ra, r(want));
            let ok = if far { dg >= dw - tol } else { dg <= dw + tol };
            assert!(
                ok,
                "{what}: anchor {a} chose {got} ({dg}), twin {want} ({dw})"
            );
            assert_eq!(labels[got as usize] == labels[a], far, "{what}: anchor {a}");
        }
    }
    (pf, nf)
}

/// The twins' mining of a batch under `metric` (the same for every backend).
struct MinedTwin {
    metric: Metric,
    hardest: (Vec<u32>, Vec<u32>),
    lists: Vec<(Mining, Vec<Triplet>)>,
}

fn mined_twin(b: &Batch, metric: Metric, minings: &[Mining]) -> MinedTwin {
    let (x, labels, n) = (b.x(), &b.labels, b.n);
    let mut ws = vec![f32::NAN; mine_triplets_workspace_len(n, b.d)];
    let (mut pt, mut nt) = (vec![0_u32; n], vec![0_u32; n]);
    scalar::hardest_pairs(x, labels, metric, &mut pt, &mut nt, &mut ws).unwrap();
    let lists = minings
        .iter()
        .map(|&mining| {
            let count = mine_triplets_count(labels, mining).unwrap();
            let mut twin = vec![Triplet::new(9, 9, 9); count];
            let k = scalar::mine_triplets(x, labels, metric, mining, &mut twin, &mut ws).unwrap();
            assert_eq!(k, count);
            (mining, twin)
        })
        .collect();
    MinedTwin {
        metric,
        hardest: (pt, nt),
        lists,
    }
}

/// Every twin mining of `batches`, for each metric `metrics` gives a batch.
fn mined_twins<'b>(
    batches: &'b [Batch],
    metrics: impl Fn(&Batch) -> &'static [Metric],
    minings: &[Mining],
) -> Vec<(&'b Batch, MinedTwin)> {
    batches
        .iter()
        .flat_map(|b| metrics(b).iter().map(move |&m| (b, m)))
        .map(|(b, m)| (b, mined_twin(b, m, minings)))
        .collect()
}

/// `mine_triplets` with every strategy of `twin`: the twin's list on exact data;
/// otherwise the same anchors and positives, and negatives that satisfy the rule up to the
/// distance bound.
fn check_mined(b: &Batch, twin: &MinedTwin, backend: Backend) {
    let (x, labels, n, metric) = (b.x(), &b.labels, b.n, twin.metric);
    let (pos, neg) = check_hardest(b, twin, backend);
    let mut ws = vec![f32::NAN; mine_triplets_workspace_len(n, b.d)];
    for (mining, twin) in &twin.lists {
        let mining = *mining;
        let what = format!(
            "{} mine_triplets {mining:?} {metric:?} {}",
            backend.name(),
            b.name()
        );
        let count = twin.len();
        let mut fast = vec![Triplet::new(9, 9, 9); count];
        assert_eq!(
            mine_triplets(x, labels, metric, mining, &mut fast, &mut ws).unwrap(),
            count
        );
        if b.exact(metric) || mining == Mining::All {
            assert_eq!(&fast, twin, "{what}");
            continue;
        }
        let r = |i: u32| x.row(i as usize).unwrap();
        for (f, t) in fast.iter().zip(twin) {
            if mining == Mining::BatchHard {
                // The sweep's choices, as `hardest_pairs` made them.
                let a = f.anchor as usize;
                assert_eq!((f.positive, f.negative), (pos[a], neg[a]), "{what}");
                continue;
            }
            assert_eq!((f.anchor, f.positive), (t.anchor, t.positive), "{what}");
            let (a, p, q) = (r(f.anchor), r(f.positive), r(f.negative));
            assert_ne!(
                labels[f.negative as usize], labels[f.anchor as usize],
                "{what}"
            );
            if f.negative == t.negative {
                continue;
            }
            // Semi-hard: the nearest negative beyond the positive, else the farthest.
            let dp = dist64(metric, a, p);
            let dq = dist64(metric, a, q);
            let tp = mining_tol(metric, a, p);
            for j in (0..n).filter(|&j| labels[j] != labels[f.anchor as usize]) {
                let rj = x.row(j).unwrap();
                let (dj, tj) = (dist64(metric, a, rj), mining_tol(metric, a, rj));
                let slack = tp + tj + mining_tol(metric, a, q);
                if dq > dp - slack {
                    // No negative clearly beyond the positive and clearly nearer.
                    assert!(
                        !(dj > dp + tp + tj && dj < dq - slack),
                        "{what}: {f:?} skips negative {j}"
                    );
                } else {
                    // The fallback: no negative clearly beyond, and the farthest.
                    assert!(
                        dj <= dp + tp + tj && dj <= dq + slack,
                        "{what}: {f:?} vs {j}"
                    );
                }
            }
        }
    }
}

#[test]
fn mining_matches_scalar() {
    let batches = batches();
    let all = [Mining::All, Mining::BatchHard, Mining::SemiHard];
    let twins = mined_twins(&batches, |_| &METRICS, &all);
    on_every_backend("hardest_pairs, mine_triplets", |backend| {
        for (b, twin) in &twins {
            check_mined(b, twin, backend);
        }
    });
}

/// The twin's side of one batch-loss configuration (the same for every backend).
struct BatchTwin {
    p: BatchParams,
    loss: f32,
    count: usize,
    active: usize,
    grad: Vec<f32>,
    mined: Vec<Triplet>,
    bounds: Bounds,
}

fn batch_twin(b: &Batch, p: BatchParams) -> BatchTwin {
    let (x, labels, n, d) = (b.x(), &b.labels[..], b.n, b.d);
    let mut grad = vec![f32::NAN; n * d];
    let mut ws = vec![f32::NAN; scalar::triplet_batch_loss_grad_workspace_len(n, d, p)];
    let out = scalar::triplet_batch_loss_grad(x, labels, p, &mut grad, &mut ws).unwrap();
    let (loss, count, active) = (out.loss, out.num_triplets, out.num_active);
    let mined = mined(x, labels, p.metric, p.mining, false);
    let tp = TripletParams::new()
        .with_metric(p.metric)
        .with_margin(p.margin)
        .with_hinge(p.hinge)
        .with_reduction(p.reduction);
    let x64 = to64(&b.data);
    let evals: Vec<Eval> = mined
        .iter()
        .map(|&t| eval_triplet(&x64, d, idx3(t), &tp))
        .collect();
    let bounds = bounds(
        &x64,
        n,
        d,
        &evals,
        &tp,
        Allow {
            all: p.mining == Mining::All,
            ..Allow::default()
        },
    );
    BatchTwin {
        p,
        loss,
        count,
        active,
        grad,
        mined,
        bounds,
    }
}

/// Fast batch loss and gradient against the twin; returns whether the gradient was
/// compared (not near a relu kink or, for semi-hard, a mining near-tie).
fn check_batch(b: &Batch, twin: &BatchTwin, backend: Backend) -> bool {
    let (x, labels, d, p) = (b.x(), &b.labels[..], b.d, twin.p);
    let what = format!("{} {p:?} {}", backend.name(), b.name());
    // NaN-filled buffers: every element the kernel reads must have been written first.
    let (out, gf) = batch_run(x, labels, p, true, f32::NAN).unwrap();
    let (lf, kf, af) = (out.loss, out.num_triplets, out.num_active);
    assert!(lf.is_finite() && gf.iter().all(|g| g.is_finite()), "{what}");
    assert_eq!(kf, twin.count, "{what}: triplet count");
    let same_choice = mined(x, labels, p.metric, p.mining, true) == twin.mined;
    if b.exact(p.metric) {
        assert!(same_choice, "{what}: mining differs on exact data");
    }
    let (bd, ls) = (&twin.bounds, twin.loss);
    if bd.near_kink && p.reduction == Reduction::MeanNonzero {
        return false;
    }
    // Batch-all and batch-hard losses are continuous in the distances; semi-hard only
    // where both chose the same triplets.
    if same_choice || p.mining != Mining::SemiHard {
        assert!(
            (f64::from(lf) - f64::from(ls)).abs() <= bd.loss,
            "{what}: loss fast {lf} scalar {ls} tol {:e}",
            bd.loss
        );
    }
    if !same_choice || bd.near_kink {
        return false;
    }
    assert_eq!(af, twin.active, "{what}: active terms");
    assert_close(&format!("{what} grad"), &gf, &twin.grad, |k| bd.grad[k / d]);
    true
}

#[test]
fn batch_losses_match_scalar() {
    let batches = batches();
    // The twins' results and the bounds, once: they do not depend on the backend.
    let mut cases = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        for metric in METRICS {
            for (mining, hinge, reduction) in [
                (Mining::All, Hinge::Relu, Reduction::MeanNonzero),
                (Mining::All, Hinge::SoftPlus, Reduction::Sum),
                (Mining::BatchHard, Hinge::Relu, Reduction::Mean),
                (Mining::SemiHard, Hinge::Relu, Reduction::Sum),
            ] {
                // The soft margin's batch-all path once per shape (its twin is slow).
                if hinge == Hinge::SoftPlus && (b.ints || metric != Metric::Euclidean) {
                    continue;
                }
                // Margins on the scale of the metric's distances; integers for exact
                // data, so the relu kinks stay exact too.
                let margin = match (metric, b.exact(metric)) {
                    (Metric::Cosine, _) => 0.1,
                    (_, true) => 1.0,
                    (Metric::SquaredEuclidean, false) => 2.0,
                    (_, false) => 0.3,
                };
                let p = BatchParams::new()
                    .with_metric(metric)
                    .with_mining(mining)
                    .with_margin(margin)
                    .with_hinge(hinge)
                    .with_reduction(reduction);
                cases.push((i, batch_twin(b, p)));
            }
        }
    }
    on_every_backend("triplet_batch_loss(_grad)", |backend| {
        let mut grads = 0;
        for (i, twin) in &cases {
            grads += usize::from(check_batch(&batches[*i], twin, backend));
        }
        // Near-ties are rare on this data: most gradients are compared.
        assert!(
            2 * grads >= cases.len(),
            "{}: {grads} of {} gradients compared",
            backend.name(),
            cases.len()
        );
    });
}

/// The explicit-triplet loss and gradient (swap, eps, both hinges) against the twin.
#[test]
fn margin_loss_matches_scalar() {
    let batches = batches();
    on_every_backend("triplet_margin_loss(_grad)", |backend| {
        let (mut runs, mut grads) = (0, 0);
        for b in &batches {
            let (x, n, d) = (b.x(), b.n, b.d);
            let mut next = xorshift(n as u64 * 1000 + d as u64);
            let ts: Vec<Triplet> = (0..3 * n)
                .map(|_| {
                    let mut i = || (next() % n as u64) as u32;
                    Triplet::new(i(), i(), i())
                })
                .collect();
            let x64 = to64(&b.data);
            for metric in METRICS {
                for (swap, hinge, reduction) in [
                    (false, Hinge::Relu, Reduction::Mean),
                    (true, Hinge::SoftPlus, Reduction::Sum),
                    (true, Hinge::Relu, Reduction::MeanNonzero),
                ] {
                    let eps: f32 = if metric == Metric::Cosine { 0.0 } else { 1e-6 };
                    let p = TripletParams::new()
                        .with_metric(metric)
                        .with_margin(if metric == Metric::Cosine { 0.1 } else { 0.5 })
                        .with_swap(swap)
                        .with_eps(eps)
                        .with_hinge(hinge)
                        .with_reduction(reduction);
                    let what = format!("{} {p:?} {}", backend.name(), b.name());
                    let k = ts.len();
                    let run = |fast: bool, fill: f32| {
                        let (mut terms, mut grad) = (vec![fill; k], vec![fill; n * d]);
                        let mut ws = vec![
                            fill;
                            if fast {
                                triplet_margin_loss_workspace_len(n, d)
                            } else {
                                scalar::triplet_margin_loss_workspace_len(n, d)
                            }
                        ];
                        let loss = if fast {
                            triplet_margin_loss_grad(x, &ts, p, &mut terms, &mut grad, &mut ws)
                        } else {
                            scalar::triplet_margin_loss_grad(
                                x, &ts, p, &mut terms, &mut grad, &mut ws,
                            )
                        }
                        .unwrap();
                        let mut terms2 = vec![-fill; k];
                        let loss2 = if fast {
                            triplet_margin_loss(x, &ts, p, &mut terms2, &mut ws)
                        } else {
                            scalar::triplet_margin_loss(x, &ts, p, &mut terms2, &mut ws)
                        }
                        .unwrap();
                        assert_eq!(
                            (loss.to_bits(), bits(&terms)),
                            (loss2.to_bits(), bits(&terms2))
                        );
                        (loss, terms, grad)
                    };
                    let (lf, tf, gf) = run(true, f32::NAN);
                    let (lf2, _, gf2) = run(true, 1e30);
                    assert_eq!(
                        (lf.to_bits(), bits(&gf)),
                        (lf2.to_bits(), bits(&gf2)),
                        "{what}"
                    );
                    let (ls, tsl, gs) = run(false, f32::NAN);
                    let evals: Vec<Eval> = ts
                        .iter()
                        .map(|&t| eval_triplet(&x64, d, idx3(t), &p))
                        .collect();
                    let bd = bounds(&x64, n, d, &evals, &p, Allow::default());
                    runs += 1;
                    if bd.near_kink && reduction == Reduction::MeanNonzero || bd.near_swap {
                        continue;
                    }
                    assert!(
                        (f64::from(lf) - f64::from(ls)).abs() <= bd.loss,
                        "{what}: loss fast {lf} scalar {ls} tol {:e}",
                        bd.loss
                    );
                    let eps = f64::from(eps);
                    for (i, e) in evals.iter().enumerate() {
                        let s =
                            tdist_scale(metric, row(&x64, d, e.ap.0), row(&x64, d, e.ap.1), eps)
                                + tdist_scale(
                                    metric,
                                    row(&x64, d, e.neg.0),
                                    row(&x64, d, e.neg.1),
                                    eps,
                                )
                                + f64::from(p.margin).abs();
                        let tol = 4.0 * (d as f64 / 8.0 + 12.0) * EPS * s
                            + 8.0 * EPS * f64::from(tsl[i].abs())
                            + 1e-30;
                        assert!(
                            (f64::from(tf[i]) - f64::from(tsl[i])).abs() <= tol,
                            "{what}: term {i}: fast {} scalar {} tol {tol:e}",
                            tf[i],
                            tsl[i]
                        );
                    }
                    if !bd.near_kink {
                        grads += 1;
                        assert_close(&format!("{what} grad"), &gf, &gs, |k| bd.grad[k / d]);
                    }
                }
            }
        }
        assert!(
            2 * grads >= runs,
            "{}: {grads} of {runs} gradients compared",
            backend.name()
        );
    });
}

// ---------------------------------------------------------------------------------------
// Contrastive.

#[test]
fn contrastive_matches_scalar() {
    let batches = batches();
    // The configurations, their bounds and the twin's results, once: they do not depend
    // on the backend. `None` bounds: a pair at a kink (the configuration is skipped).
    let mut cases = Vec::new();
    for b in &batches {
        let (x, labels, n, d) = (b.x(), &b.labels[..], b.n, b.d);
        for metric in METRICS {
            // Margins among the batch's own distances, both parts active, each in the
            // middle of the widest gap between distances near its quantile: no pair sits
            // at a kink.
            let mut all: Vec<f64> = (0..n)
                .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                .map(|(i, j)| dist64(metric, x.row(i).unwrap(), x.row(j).unwrap()))
                .collect();
            all.sort_by(f64::total_cmp);
            let in_gap = |q0: f64, q1: f64| {
                let (i0, i1) = (
                    (q0 * all.len() as f64) as usize,
                    (q1 * all.len() as f64) as usize,
                );
                let w = all[i0..=i1]
                    .windows(2)
                    .max_by(|u, v| (u[1] - u[0]).total_cmp(&(v[1] - v[0])))
                    .unwrap();
                (0.5 * (w[0] + w[1])) as f32
            };
            let (pos_margin, neg_margin) = (in_gap(0.05, 0.3), in_gap(0.5, 0.8));
            for (form, reduction) in [
                (
                    ContrastiveForm::Linear,
                    ContrastiveReduction::MeanNonzeroPerPart,
                ),
                (ContrastiveForm::Squared, ContrastiveReduction::Sum),
                (ContrastiveForm::Linear, ContrastiveReduction::Mean),
            ] {
                let p = ContrastiveParams::new(pos_margin, neg_margin)
                    .with_form(form)
                    .with_reduction(reduction);
                let tol = contrastive::tolerances(d, &Pairs::new(&x, metric), labels, &p);
                let mut ws = vec![f32::NAN; scalar::contrastive_loss_workspace_len(n, d)];
                let mut gs = vec![f32::NAN; n * d];
                let ls =
                    scalar::contrastive_loss_grad(x, labels, metric, p, &mut gs, &mut ws).unwrap();
                cases.push((b, metric, p, tol, ls, gs));
            }
        }
    }
    let checked = cases.iter().filter(|c| c.3.is_some()).count();
    assert!(
        2 * checked >= cases.len(),
        "{checked} of {} compared",
        cases.len()
    );
    on_every_backend("contrastive_loss(_grad)", |backend| {
        for (b, metric, p, tol, ls, gs) in &cases {
            let Some((loss_tol, row_tol)) = tol else {
                continue;
            };
            let (x, labels, n, d, metric, p) = (b.x(), &b.labels[..], b.n, b.d, *metric, *p);
            let what = format!("{} {metric:?} {p:?} {}", backend.name(), b.name());
            let mut ws = vec![f32::NAN; contrastive_loss_workspace_len(n, d)];
            let mut gf = vec![f32::NAN; n * d];
            let lf = contrastive_loss_grad(x, labels, metric, p, &mut gf, &mut ws).unwrap();
            ws.fill(-3.5);
            let lf2 = contrastive_loss(x, labels, metric, p, &mut ws).unwrap();
            assert_eq!(lf.to_bits(), lf2.to_bits(), "{what}: loss-only call");
            assert!(
                (f64::from(lf) - f64::from(*ls)).abs() <= *loss_tol,
                "{what}: loss fast {lf} scalar {ls} tol {loss_tol:e}"
            );
            assert_close(&format!("{what} grad"), &gf, gs, |k| row_tol[k / d]);
        }
    });
}

// ---------------------------------------------------------------------------------------
// Quadruplet: the miner, then the loss over its quadruplets (as tests/variants.rs).

/// `mine_quadruplets` against the twin (exact data) or against its rule up to the
/// distance bound; returns the fast kernel's quadruplets.
fn check_mined_quadruplets(b: &Batch, metric: Metric, backend: Backend) -> Vec<Quadruplet> {
    let (x, labels, n) = (b.x(), &b.labels[..], b.n);
    let what = format!(
        "{} mine_quadruplets {metric:?} {}",
        backend.name(),
        b.name()
    );
    let count = mine_quadruplets_count(labels).unwrap();
    let mut ws = vec![f32::NAN; mine_quadruplets_workspace_len(n, b.d)];
    let (mut fast, mut twin) = (
        vec![Quadruplet::default(); count],
        vec![Quadruplet::default(); count],
    );
    assert_eq!(
        mine_quadruplets(x, labels, metric, &mut fast, &mut ws).unwrap(),
        count
    );
    assert_eq!(
        scalar::mine_quadruplets(x, labels, metric, &mut twin, &mut ws).unwrap(),
        count
    );
    if b.exact(metric) {
        assert_eq!(fast, twin, "{what}");
        return fast;
    }
    let r = |i: usize| x.row(i).unwrap();
    let dd = |i: usize, j: usize| dist64(metric, r(i), r(j));
    let tol = |i: usize, j: usize| mining_tol(metric, r(i), r(j));
    for (f, t) in fast.iter().zip(&twin) {
        assert_eq!(f.anchor, t.anchor, "{what}");
        let [a, p, n1, n2] = f.to_array().map(|v| v as usize);
        assert!(p != a && labels[p] == labels[a], "{what}: {f:?}");
        assert!(labels[n1] != labels[a], "{what}: {f:?}");
        assert!(
            labels[n2] != labels[a] && labels[n2] != labels[n1],
            "{what}: {f:?}"
        );
        for j in 0..n {
            if j != a && labels[j] == labels[a] {
                assert!(
                    dd(a, p) + tol(a, p) + tol(a, j) >= dd(a, j),
                    "{what}: farthest positive"
                );
            }
            if labels[j] != labels[a] {
                assert!(
                    dd(a, n1) <= dd(a, j) + tol(a, n1) + tol(a, j),
                    "{what}: nearest negative"
                );
                if labels[j] != labels[n1] {
                    assert!(
                        dd(n1, n2) <= dd(n1, j) + tol(n1, n2) + tol(n1, j),
                        "{what}: nearest third-class row"
                    );
                }
            }
        }
    }
    fast
}

#[test]
fn quadruplet_matches_scalar() {
    let batches = batches();
    on_every_backend("mine_quadruplets, quadruplet_loss(_grad)", |backend| {
        let (mut runs, mut checked) = (0, 0);
        for b in &batches {
            let (x, n, d) = (b.x(), b.n, b.d);
            for metric in METRICS {
                let quads = check_mined_quadruplets(b, metric, backend);
                let scale = (0..n)
                    .map(|j| dist64(metric, x.row(0).unwrap(), x.row(j).unwrap()))
                    .fold(0.0, f64::max) as f32;
                for (hinge, reduction) in [
                    (Hinge::Relu, Reduction::MeanNonzero),
                    (Hinge::SoftPlus, Reduction::Mean),
                ] {
                    let p = QuadrupletParams::new(0.37 * scale, 0.19 * scale)
                        .with_hinge(hinge)
                        .with_reduction(reduction);
                    let what = format!("{} {metric:?} {p:?} {}", backend.name(), b.name());
                    runs += 1;
                    let Some((loss_tol, row_tol)) = quadruplet::tolerances(&x, &quads, metric, &p)
                    else {
                        continue;
                    };
                    checked += 1;
                    let mut ws = vec![
                        f32::NAN;
                        quadruplet_loss_workspace_len(n, d)
                            .max(scalar::quadruplet_loss_workspace_len(n, d))
                    ];
                    let (mut gf, mut gs) = (vec![f32::NAN; n * d], vec![f32::NAN; n * d]);
                    let lf = quadruplet_loss_grad(x, &quads, metric, p, &mut gf, &mut ws).unwrap();
                    ws.fill(1e30);
                    assert_eq!(
                        quadruplet_loss(x, &quads, metric, p, &mut ws)
                            .unwrap()
                            .to_bits(),
                        lf.to_bits(),
                        "{what}"
                    );
                    let ls = scalar::quadruplet_loss_grad(x, &quads, metric, p, &mut gs, &mut ws)
                        .unwrap();
                    assert!(
                        (f64::from(lf) - f64::from(ls)).abs() <= loss_tol,
                        "{what}: loss fast {lf} scalar {ls} tol {loss_tol:e}"
                    );
                    assert_close(&format!("{what} grad"), &gf, &gs, |k| row_tol[k / d]);
                }
            }
        }
        assert!(
            2 * checked >= runs,
            "{}: {checked} of {runs} compared",
            backend.name()
        );
    });
}

// ---------------------------------------------------------------------------------------
// Proxy losses.

/// Loss and both gradients of `which`, fast or twin; checked against the loss-only call.
fn proxy_run(
    which: Proxy,
    fast: bool,
    x: Matrix<'_>,
    l: &[u32],
    p: Matrix<'_>,
) -> (f32, Vec<f32>, Vec<f32>) {
    let (n, c, d) = (x.rows(), p.rows(), x.dim());
    let mut ws = vec![f32::NAN; which.ws_len(n, c, d)];
    let (mut g, mut gp) = (vec![f32::NAN; n * d], vec![f32::NAN; c * d]);
    let loss = which.grad(fast, x, l, p, &mut g, &mut gp, &mut ws).unwrap();
    ws.fill(-1e30);
    let loss2 = which.loss(fast, x, l, p, &mut ws).unwrap();
    assert_eq!(loss.to_bits(), loss2.to_bits(), "{which:?}: loss-only call");
    (loss, g, gp)
}

#[test]
fn proxy_losses_match_scalar() {
    let batches = batches();
    on_every_backend(
        "proxy_nca_loss(_grad), proxy_anchor_loss(_grad)",
        |backend| {
            for b in &batches {
                let (x, n, d) = (b.x(), b.n, b.d);
                // Proxy labels index the proxies: 9 classes, one without rows at n = 37.
                let c = 9;
                let labels: Vec<u32> = (0..n as u32)
                    .map(|i| i * 4 % (c as u32 - u32::from(n == 37)))
                    .collect();
                let pd = values(c * d, 0x5eed + d as u64, b.ints);
                let p = Matrix::new(&pd, c, d).unwrap();
                for which in [
                    Proxy::Nca(ProxyNcaParams::new(3.0)),
                    Proxy::Nca(ProxyNcaParams::pytorch_metric_learning()),
                    Proxy::Anchor(ProxyAnchorParams::pytorch_metric_learning()),
                    Proxy::Anchor(ProxyAnchorParams::new(-0.2, 8.0)),
                ] {
                    let what = format!("{} {which:?} {}", backend.name(), b.name());
                    let (lf, gf, gpf) = proxy_run(which, true, x, &labels, p);
                    let (ls, gs, gps) = proxy_run(which, false, x, &labels, p);
                    assert_proxy_close(
                        &what,
                        (x, p),
                        (lf, &gf, &gpf),
                        (ls, &gs, &gps),
                        which.tolerances(n, c, d),
                    );
                }
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// Face heads.

/// ArcFace (`Some(params)`) or CosFace: loss and both gradients, fast or twin; checked
/// against the loss-only call.
fn face_run(
    arc: Option<ArcFaceParams>,
    cos: CosFaceParams,
    fast: bool,
    x: Matrix<'_>,
    l: &[u32],
    w: Matrix<'_>,
) -> (f32, Vec<f32>, Vec<f32>) {
    let (n, c, d) = (x.rows(), w.rows(), x.dim());
    let len = arcface_loss_workspace_len(n, c, d).max(scalar::arcface_loss_workspace_len(n, c, d));
    let mut ws = vec![f32::NAN; len];
    let (mut g, mut gw) = (vec![f32::NAN; n * d], vec![f32::NAN; c * d]);
    let (loss, loss2) = match (arc, fast) {
        (Some(p), true) => (
            arcface_loss_grad(x, l, w, p, &mut g, &mut gw, &mut ws).unwrap(),
            arcface_loss(x, l, w, p, &mut ws).unwrap(),
        ),
        (Some(p), false) => (
            scalar::arcface_loss_grad(x, l, w, p, &mut g, &mut gw, &mut ws).unwrap(),
            scalar::arcface_loss(x, l, w, p, &mut ws).unwrap(),
        ),
        (None, true) => (
            cosface_loss_grad(x, l, w, cos, &mut g, &mut gw, &mut ws).unwrap(),
            cosface_loss(x, l, w, cos, &mut ws).unwrap(),
        ),
        (None, false) => (
            scalar::cosface_loss_grad(x, l, w, cos, &mut g, &mut gw, &mut ws).unwrap(),
            scalar::cosface_loss(x, l, w, cos, &mut ws).unwrap(),
        ),
    };
    assert_eq!(loss.to_bits(), loss2.to_bits(), "loss-only call");
    (loss, g, gw)
}

#[test]
fn face_heads_match_scalar() {
    let batches = batches();
    on_every_backend("arcface_loss(_grad), cosface_loss(_grad)", |backend| {
        for b in &batches {
            let (x, n, d) = (b.x(), b.n, b.d);
            // 70 classes at d 33 cross one 64-class column block; one class without rows.
            let c = if d == 33 { 70 } else { 9 };
            let labels: Vec<u32> = (0..n as u32).map(|i| i * 4 % (c as u32 - 1)).collect();
            let wd = values(c * d, 0xface + d as u64, b.ints);
            let w = Matrix::new(&wd, c, d).unwrap();
            let cmax = max_target_cos(&b.data, &wd, &labels, d);
            for scale in [1.0_f32, 64.0] {
                let cos = CosFaceParams::pytorch_metric_learning().with_scale(scale);
                let mut heads = vec![(None, 1.0)];
                if cmax <= 0.99 {
                    let arc = ArcFaceParams::pytorch_metric_learning().with_scale(scale);
                    heads.push((Some(arc), 1.0 + 1.0 / (1.0 - cmax * cmax).sqrt()));
                }
                for (arc, slope) in heads {
                    let what = format!("{} {arc:?} s {scale} {}", backend.name(), b.name());
                    let fast = face_run(arc, cos, true, x, &labels, w);
                    let twin = face_run(arc, cos, false, x, &labels, w);
                    assert_proxy_close(
                        &what,
                        (x, w),
                        (fast.0, &fast.1, &fast.2),
                        (twin.0, &twin.1, &twin.2),
                        face_tolerances(scale, slope, n, c, d),
                    );
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// Retrieval.

/// The bound of `knn`'s distances (`(d / 8 + 10) 2^-24` times the distance's absolute
/// terms, plus the twin's rounding), twice over.
fn knn_tol(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let d = a.len() as f64;
    let s = match metric {
        Metric::SquaredEuclidean => dist64(metric, a, b),
        m => dist_scale(m, a, b),
    };
    2.0 * ((d / 8.0 + 10.0) * U * s + U * dist64(metric, a, b).abs()) + 1e-30
}

/// The gallery of a batch: `m` rows of the same kind of data, labelled like the batch.
fn gallery(b: &Batch) -> (Vec<f32>, Vec<u32>, usize) {
    let m = b.n + 13;
    let yd = values(m * b.d, 0xfeed + b.n as u64, b.ints);
    let yl = (0..m as u32).map(|i| (i * 3 % 7) * 31 + 3).collect();
    (yd, yl, m)
}

/// A prepared gallery with its bf16 filter copy gives the plain gallery's lists bit for
/// bit under every backend, single queries and blocks alike; only the AVX-512 backend
/// can read the copy.
#[test]
fn filtered_gallery_matches_plain() {
    use triplet_kernels::{
        gallery_filter_len, knn_gallery, knn_gallery_workspace_len, prepare_gallery,
        prepare_gallery_filtered, Backend, SearchMetric,
    };
    let batches = batches();
    on_every_backend("filtered gallery", |backend| {
        for b in &batches {
            let d = b.d;
            let (yd, _, m) = gallery(b);
            let y = Matrix::new(&yd, m, d).unwrap();
            for metric in [
                SearchMetric::SquaredEuclidean,
                SearchMetric::Cosine,
                SearchMetric::InnerProduct,
            ] {
                let mut n1 = vec![0.0_f32; m];
                let mut n2 = vec![0.0_f32; m];
                let mut filter = vec![0.0_f32; gallery_filter_len(m, d)];
                let plain = prepare_gallery(y, metric, &mut n1).unwrap();
                let filtered = prepare_gallery_filtered(y, metric, &mut n2, &mut filter).unwrap();
                if backend != Backend::Avx512 {
                    assert!(!filtered.filtered());
                }
                for q in [1, 3, b.n] {
                    let x = Matrix::new(&b.data[..q * d], q, d).unwrap();
                    let k = 5.min(m);
                    let mut ws = vec![f32::NAN; knn_gallery_workspace_len(q, m, d)];
                    let (mut i1, mut d1) = (vec![7_u32; q * k], vec![f32::NAN; q * k]);
                    let (mut i2, mut d2) = (vec![7_u32; q * k], vec![f32::NAN; q * k]);
                    knn_gallery(x, &plain, k, &mut i1, &mut d1, &mut ws).unwrap();
                    knn_gallery(x, &filtered, k, &mut i2, &mut d2, &mut ws).unwrap();
                    let what = format!("{} {metric:?} q {q} {}", backend.name(), b.name());
                    assert_eq!(i1, i2, "{what}");
                    assert_eq!(bits(&d1), bits(&d2), "{what}");
                }
            }
        }
    });
}

#[test]
fn knn_matches_scalar() {
    let batches = batches();
    on_every_backend("knn", |backend| {
        for b in &batches {
            let (x, d) = (b.x(), b.d);
            let (yd, _, m) = gallery(b);
            let y = Matrix::new(&yd, m, d).unwrap();
            for (reference, refs) in [(None, b.n - 1), (Some(y), m)] {
                for metric in METRICS {
                    for k in [5, refs] {
                        let what = format!(
                            "{} knn {metric:?} k {k} gallery {} {}",
                            backend.name(),
                            reference.is_some(),
                            b.name()
                        );
                        let q = b.n;
                        let mut ws = vec![
                            f32::NAN;
                            knn_workspace_len(q, reference.map_or(q, |y| y.rows()), d)
                        ];
                        let (mut fi, mut fd) = (vec![7_u32; q * k], vec![f32::NAN; q * k]);
                        knn(x, reference, metric, k, &mut fi, &mut fd, &mut ws).unwrap();
                        let (mut si, mut sd) = (vec![7_u32; q * k], vec![f32::NAN; q * k]);
                        scalar::knn(x, reference, metric, k, &mut si, &mut sd, &mut ws).unwrap();
                        if b.exact(metric) {
                            assert_eq!(fi, si, "{what}");
                        }
                        let r = |j: u32| reference.unwrap_or(x).row(j as usize).unwrap();
                        for i in 0..q * k {
                            let a = x.row(i / k).unwrap();
                            // Rank by rank: the distances agree even where near-ties swap
                            // two neighbours.
                            let tol =
                                knn_tol(metric, a, r(fi[i])).max(knn_tol(metric, a, r(si[i])));
                            assert!(
                                (f64::from(fd[i]) - f64::from(sd[i])).abs() <= 2.0 * tol,
                                "{what}: rank {i}: fast {} ({}) scalar {} ({}) tol {tol:e}",
                                fd[i],
                                fi[i],
                                sd[i],
                                si[i]
                            );
                            let own = dist64(metric, a, r(fi[i]));
                            assert!(
                                (f64::from(fd[i]) - own).abs() <= tol,
                                "{what}: rank {i} distance"
                            );
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn retrieval_metrics_match_scalar() {
    let batches = batches();
    on_every_backend("retrieval_metrics", |backend| {
        for b in &batches {
            let (x, d) = (b.x(), b.d);
            let (yd, yl, m) = gallery(b);
            let y = Matrix::new(&yd, m, d).unwrap();
            for (reference, refs) in [(None, b.n), (Some((y, &yl[..])), m)] {
                for metric in METRICS {
                    let k = 5;
                    let what = format!(
                        "{} retrieval_metrics {metric:?} gallery {} {}",
                        backend.name(),
                        reference.is_some(),
                        b.name()
                    );
                    let mut ws = vec![f32::NAN; retrieval_metrics_workspace_len(b.n, refs, d)];
                    let f = retrieval_metrics(x, &b.labels, reference, metric, k, &mut ws).unwrap();
                    let s = scalar::retrieval_metrics(x, &b.labels, reference, metric, k, &mut ws)
                        .unwrap();
                    assert_eq!(f.evaluated, s.evaluated, "{what}");
                    // Each query can change only where two of its references are within the
                    // distance bound of each other (none on exact data).
                    let ambiguous = if b.exact(metric) {
                        0
                    } else {
                        (0..b.n)
                            .filter(|&i| {
                                let a = x.row(i).unwrap();
                                let (rows, own): (Vec<&[f32]>, bool) = match reference {
                                    Some((y, _)) => (y.row_iter().collect(), false),
                                    None => (x.row_iter().collect(), true),
                                };
                                let mut ds: Vec<(f64, f64)> = rows
                                    .iter()
                                    .enumerate()
                                    .filter(|&(j, _)| !(own && j == i))
                                    .map(|(_, r)| (dist64(metric, a, r), knn_tol(metric, a, r)))
                                    .collect();
                                ds.sort_by(|u, v| u.0.total_cmp(&v.0));
                                ds.windows(2).any(|w| w[1].0 - w[0].0 <= w[0].1 + w[1].1)
                            })
                            .count()
                    };
                    let tol = ambiguous as f64 / f.evaluated.max(1) as f64 + 1e-12;
                    for (name, fv, sv) in [
                        ("precision_at_1", f.precision_at_1, s.precision_at_1),
                        ("recall_at_k", f.recall_at_k, s.recall_at_k),
                        ("r_precision", f.r_precision, s.r_precision),
                        (
                            "map_at_r",
                            f.mean_average_precision_at_r,
                            s.mean_average_precision_at_r,
                        ),
                    ] {
                        if b.exact(metric) {
                            assert_eq!(fv, sv, "{what}: {name}");
                        }
                        assert!(
                            (fv - sv).abs() <= tol,
                            "{what}: {name} fast {fv} scalar {sv} tol {tol}"
                        );
                    }
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------
// Row kernels.

#[test]
fn row_kernels_match_scalar() {
    let batches = batches();
    on_every_backend("row_norms, l2_normalize(_backward)", |_| {
        for b in &batches {
            check_row_kernels(b.x());
        }
    });
}

/// More rows than one tile of the batch-hard sweep and one block of the row-wise minings
/// (256): off-diagonal tiles and a second block, under every backend.
#[test]
fn tiles_and_blocks_match_scalar() {
    let (n, d) = (261, 5);
    let batches: Vec<Batch> = [false, true]
        .into_iter()
        .map(|ints| Batch {
            n,
            d,
            data: values(n * d, 0x7_11e5, ints),
            labels: (0..n as u32).map(|i| (i * 5 % 7) * 31 + 3).collect(),
            ints,
        })
        .collect();
    // Real data: Euclidean and cosine; integer data (exact decisions): squared Euclidean.
    let metrics = |b: &Batch| -> &'static [Metric] {
        if b.ints {
            &METRICS[..1]
        } else {
            &METRICS[1..]
        }
    };
    let mut cases = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        for (metric, mining, margin) in [
            (Metric::Euclidean, Mining::BatchHard, 0.3),
            (Metric::SquaredEuclidean, Mining::SemiHard, 1.0),
            (Metric::Cosine, Mining::BatchHard, 0.1),
        ] {
            if !metrics(b).contains(&metric) {
                continue;
            }
            let p = BatchParams::new()
                .with_metric(metric)
                .with_mining(mining)
                .with_margin(margin)
                .with_reduction(Reduction::Mean);
            cases.push((i, batch_twin(b, p)));
        }
    }
    // Batch-all mining reads the labels only (and lists 2.1e6 triplets here).
    let twins = mined_twins(&batches, metrics, &[Mining::BatchHard, Mining::SemiHard]);
    on_every_backend("tiles and blocks", |backend| {
        for (b, twin) in &twins {
            check_mined(b, twin, backend);
        }
        for (i, twin) in &cases {
            check_batch(&batches[*i], twin, backend);
        }
    });
}
