//! The scalar twins' gradients held to an independent `f64` computation written here:
//! plain loops over the textbook formulas, with no call to a fast kernel or to another
//! twin for the expected value.
//!
//! Criterion: every gradient element of a twin is within 4 `f32` roundings of the exact
//! value relative to the gradient's scale, `|twin - exact| <= 4 * 2^-24 * max |exact|`,
//! and every loss within 4 roundings of its own magnitude. A twin that rounds each output
//! element once meets it with room to spare; one that rounds after every contribution
//! does not, once a row receives many contributions.

use triplet_kernels::{
    scalar, BatchParams, ContrastiveForm, ContrastiveParams, ContrastiveReduction, Hinge, Matrix,
    Metric, Mining, ProxyAnchorParams, ProxyNcaParams, Quadruplet, QuadrupletParams, Reduction,
    Triplet, TripletParams, NORM_EPS,
};

/// One `f32` rounding, `2^-24`.
const ROUNDING: f64 = 1.0 / 16_777_216.0;
const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];
const REDUCTIONS: [Reduction; 3] = [Reduction::Sum, Reduction::Mean, Reduction::MeanNonzero];

// ---------------------------------------------------------------------------------------
// Data.

/// SplitMix64, with Box-Muller normals: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]`.
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1_u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn normals(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.normal() as f32).collect()
    }
}

/// `classes` classes of `per_class` consecutive rows each.
fn block_labels(classes: usize, per_class: usize) -> Vec<u32> {
    (0..classes * per_class)
        .map(|i| (i / per_class) as u32)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Exact arithmetic on f64 rows.

fn rows64(x: &[f32], d: usize) -> Vec<Vec<f64>> {
    x.chunks(d)
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = 0.0;
    for (u, v) in a.iter().zip(b) {
        s += u * v;
    }
    s
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

fn clamped(r: f64) -> f64 {
    r.max(f64::from(NORM_EPS))
}

fn dist(metric: Metric, a: &[f64], b: &[f64]) -> f64 {
    let mut sq = 0.0;
    for (u, v) in a.iter().zip(b) {
        sq += (u - v) * (u - v);
    }
    match metric {
        Metric::SquaredEuclidean => sq,
        Metric::Euclidean => sq.sqrt(),
        Metric::Cosine => 1.0 - dot(a, b) / (clamped(norm(a)) * clamped(norm(b))),
        _ => unreachable!("a variant this test does not know"),
    }
}

/// `d d(a, b) / d a`, `dist = d(a, b)`: `2 (a - b)`, `(a - b) / d` (0 at `d = 0`), and for
/// `1 - <a, b> / (|a| |b|)`, `-b / (|a| |b|) + cos a / |a|^2` (a clamped norm is a
/// constant, so the second term goes where `|a|` is clamped).
fn dist_grad(metric: Metric, a: &[f64], b: &[f64], dist: f64) -> Vec<f64> {
    match metric {
        Metric::SquaredEuclidean => a.iter().zip(b).map(|(u, v)| 2.0 * (u - v)).collect(),
        Metric::Euclidean => a
            .iter()
            .zip(b)
            .map(|(u, v)| if dist > 0.0 { (u - v) / dist } else { 0.0 })
            .collect(),
        Metric::Cosine => {
            let (ra, rb) = (norm(a), norm(b));
            let (na, nb) = (clamped(ra), clamped(rb));
            let cos = dot(a, b) / (na * nb);
            let own = if ra > f64::from(NORM_EPS) {
                cos / (na * na)
            } else {
                0.0
            };
            a.iter()
                .zip(b)
                .map(|(u, v)| -v / (na * nb) + own * u)
                .collect()
        }
        _ => unreachable!("a variant this test does not know"),
    }
}

fn axpy(k: f64, v: &[f64], out: &mut [f64]) {
    for (o, x) in out.iter_mut().zip(v) {
        *o += k * x;
    }
}

/// The gradient with respect to `x` of a function of `x^ = x / |x|`, from its gradient
/// `g` with respect to `x^`: the projection `(g - x^ <x^, g>) / |x|` (rows not clamped).
fn through_normalization(x: &[f64], g: &[f64]) -> Vec<f64> {
    let r = norm(x);
    assert!(r > f64::from(NORM_EPS), "test data: a row at the clamp");
    let xh: Vec<f64> = x.iter().map(|v| v / r).collect();
    let p = dot(&xh, g);
    g.iter()
        .zip(&xh)
        .map(|(gv, xv)| (gv - xv * p) / r)
        .collect()
}

/// Pair coefficients `c[i][j]` (of `d(x_i, x_j)` in the loss) to the gradient: `d` is
/// symmetric, so row `i` gets `(c[i][j] + c[j][i]) d d(x_i, x_j) / d x_i`.
fn pair_grad(metric: Metric, rows: &[Vec<f64>], coef: &[f64]) -> Vec<Vec<f64>> {
    let n = rows.len();
    let mut g = vec![vec![0.0; rows[0].len()]; n];
    for i in 0..n {
        for j in 0..n {
            let k = coef[i * n + j] + coef[j * n + i];
            if i != j && k != 0.0 {
                let dij = dist(metric, &rows[i], &rows[j]);
                axpy(k, &dist_grad(metric, &rows[i], &rows[j], dij), &mut g[i]);
            }
        }
    }
    g
}

fn hinge(h: Hinge, v: f64) -> f64 {
    match h {
        Hinge::Relu => v.max(0.0),
        Hinge::SoftPlus => {
            if v > 0.0 {
                v + (-v).exp().ln_1p()
            } else {
                v.exp().ln_1p()
            }
        }
        _ => unreachable!("a variant this test does not know"),
    }
}

fn slope(h: Hinge, v: f64) -> f64 {
    match h {
        Hinge::Relu => f64::from(u8::from(v > 0.0)),
        Hinge::SoftPlus => 1.0 / (1.0 + (-v).exp()),
        _ => unreachable!("a variant this test does not know"),
    }
}

fn active(h: Hinge, v: f64) -> bool {
    match h {
        Hinge::Relu => v > 0.0,
        Hinge::SoftPlus => true,
        _ => unreachable!("a variant this test does not know"),
    }
}

fn weight(r: Reduction, count: usize, active: usize) -> f64 {
    let divisor = match r {
        Reduction::Sum => return 1.0,
        Reduction::Mean => count,
        Reduction::MeanNonzero => active,
        _ => unreachable!("a variant this test does not know"),
    };
    if divisor == 0 {
        0.0
    } else {
        1.0 / divisor as f64
    }
}

// ---------------------------------------------------------------------------------------
// Checks.

/// Asserts the criterion, returns the largest error relative to the gradient's scale.
fn check_grad(what: &str, twin: &[f32], exact: &[f64]) -> f64 {
    assert_eq!(twin.len(), exact.len(), "{what}");
    let scale = exact.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: a zero gradient tests nothing");
    let err = twin
        .iter()
        .zip(exact)
        .map(|(&t, &e)| (f64::from(t) - e).abs())
        .fold(0.0_f64, f64::max);
    assert!(
        err <= 4.0 * ROUNDING * scale,
        "{what}: max error {err:e} = {:.2} roundings of the scale {scale:e}",
        err / scale / ROUNDING
    );
    err / scale
}

fn check_loss(what: &str, twin: f32, exact: f64) {
    let err = (f64::from(twin) - exact).abs();
    assert!(
        err <= 4.0 * ROUNDING * exact.abs(),
        "{what}: loss {twin} vs exact {exact} (error {err:e})"
    );
}

fn flat(rows: &[Vec<f64>]) -> Vec<f64> {
    rows.concat()
}

// ---------------------------------------------------------------------------------------
// Batch losses.

/// The triplets `mining` selects, by the rules of `triplet_kernels::mining`, from the
/// `n x n` distances `dm`.
fn select(dm: &[f64], labels: &[u32], mining: Mining) -> Vec<(usize, usize, usize)> {
    let n = labels.len();
    let d = |i: usize, j: usize| dm[i * n + j];
    let pos = |a: usize| (0..n).filter(move |&p| p != a && labels[p] == labels[a]);
    let neg = |a: usize| (0..n).filter(move |&q| labels[q] != labels[a]);
    // Strictly better only: ties keep the smallest index.
    let best =
        |it: &mut dyn Iterator<Item = usize>, a: usize, better: &dyn Fn(f64, f64) -> bool| {
            let mut b: Option<usize> = None;
            for j in it {
                if b.is_none_or(|k| better(d(a, j), d(a, k))) {
                    b = Some(j);
                }
            }
            b
        };
    let mut out = Vec::new();
    for a in 0..n {
        match mining {
            Mining::All => {
                for p in pos(a) {
                    out.extend(neg(a).map(|q| (a, p, q)));
                }
            }
            Mining::BatchHard => {
                let p = best(&mut pos(a), a, &|u, v| u > v);
                let q = best(&mut neg(a), a, &|u, v| u < v);
                if let (Some(p), Some(q)) = (p, q) {
                    out.push((a, p, q));
                }
            }
            Mining::SemiHard => {
                if neg(a).next().is_none() {
                    continue;
                }
                for p in pos(a) {
                    let dap = d(a, p);
                    let above = best(&mut neg(a).filter(|&q| d(a, q) > dap), a, &|u, v| u < v);
                    let q = above.or_else(|| best(&mut neg(a), a, &|u, v| u > v));
                    out.push((a, p, q.unwrap()));
                }
            }
            _ => unreachable!("a variant this test does not know"),
        }
    }
    out
}

struct BatchExact {
    loss: f64,
    count: usize,
    active: usize,
    grad: Vec<f64>,
}

/// The batch loss and its gradient. With `normalize`, the loss is that of the rows
/// normalised and rounded to `f32` (the twin's documented definition), and the gradient is
/// chained through the normalisation of the original rows.
fn batch_exact(x: &[f32], d: usize, labels: &[u32], p: &BatchParams) -> BatchExact {
    let xr = rows64(x, d);
    let y: Vec<Vec<f64>> = if p.normalize {
        xr.iter()
            .map(|r| {
                let c = clamped(norm(r));
                r.iter().map(|v| f64::from((v / c) as f32)).collect()
            })
            .collect()
    } else {
        xr.clone()
    };
    let n = y.len();
    let mut dm = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            dm[i * n + j] = dist(p.metric, &y[i], &y[j]);
        }
    }
    let triplets = select(&dm, labels, p.mining);
    let margin = f64::from(p.margin);
    let values: Vec<f64> = triplets
        .iter()
        .map(|&(a, q, r)| dm[a * n + q] - dm[a * n + r] + margin)
        .collect();
    let sum: f64 = values.iter().map(|&v| hinge(p.hinge, v)).sum();
    let act = values.iter().filter(|&&v| active(p.hinge, v)).count();
    let w = weight(p.reduction, values.len(), act);
    let mut coef = vec![0.0; n * n];
    for (&(a, q, r), &v) in triplets.iter().zip(&values) {
        let c = w * slope(p.hinge, v);
        coef[a * n + q] += c;
        coef[a * n + r] -= c;
    }
    let gy = pair_grad(p.metric, &y, &coef);
    let grad = if p.normalize {
        xr.iter()
            .zip(&gy)
            .map(|(r, g)| through_normalization(r, g))
            .collect::<Vec<_>>()
    } else {
        gy
    };
    BatchExact {
        loss: w * sum,
        count: values.len(),
        active: act,
        grad: flat(&grad),
    }
}

/// Twin against exact for one batch configuration; the largest relative gradient error.
fn batch_case(what: &str, x: &[f32], d: usize, labels: &[u32], p: BatchParams) -> f64 {
    let n = labels.len();
    let m = Matrix::new(x, n, d).unwrap();
    let mut grad = vec![f32::NAN; n * d];
    let mut ws = vec![f32::NAN; scalar::triplet_batch_loss_grad_workspace_len(n, d, p)];
    let out = scalar::triplet_batch_loss_grad(m, labels, p, &mut grad, &mut ws).unwrap();
    let exact = batch_exact(x, d, labels, &p);
    assert_eq!(
        (out.num_triplets, out.num_active),
        (exact.count, exact.active),
        "{what}"
    );
    check_loss(what, out.loss, exact.loss);
    check_grad(what, &grad, &exact.grad)
}

/// The acceptance check of the `f64` accumulation: batch-all, sum, squared Euclidean,
/// 32 classes x 8 rows of dimension 128, standard-normal data, margin 0.2. Every row
/// gets thousands of contributions of either sign (6944 if every triplet were active) to
/// a gradient of scale about `1e4`; a twin rounding after each of them is `2.7e-5` off
/// relative to the scale here, one rounding once is below `2^-24 = 6e-8`.
#[test]
fn acceptance_batch_all_sum_squared_256x128() {
    let (classes, per_class, d) = (32, 8, 128);
    let labels = block_labels(classes, per_class);
    let x = Rng(0x5eed_0001).normals(labels.len() * d);
    let p = BatchParams::new()
        .with_metric(Metric::SquaredEuclidean)
        .with_mining(Mining::All)
        .with_margin(0.2)
        .with_reduction(Reduction::Sum);
    let rel = batch_case("acceptance", &x, d, &labels, p);
    eprintln!("acceptance: max |twin - exact| / max |exact| = {rel:e}");
    assert!(rel <= 1e-6);
}

/// Every mining, metric and reduction, with and without normalisation, the relu and the
/// soft margin, on a modest batch.
#[test]
fn batch_every_configuration() {
    let (classes, per_class, d) = (5, 8, 16);
    let labels = block_labels(classes, per_class);
    let x = Rng(0x5eed_0002).normals(labels.len() * d);
    let mut worst = 0.0_f64;
    for metric in METRICS {
        for mining in [Mining::All, Mining::BatchHard, Mining::SemiHard] {
            for reduction in REDUCTIONS {
                for normalize in [false, true] {
                    for (hinge, margin) in [(Hinge::Relu, 0.2), (Hinge::SoftPlus, 0.0)] {
                        let p = BatchParams::new()
                            .with_metric(metric)
                            .with_mining(mining)
                            .with_margin(margin)
                            .with_hinge(hinge)
                            .with_reduction(reduction)
                            .with_normalize(normalize);
                        let what = format!("{p:?}");
                        worst = worst.max(batch_case(&what, &x, d, &labels, p));
                    }
                }
            }
        }
    }
    eprintln!("batch, every configuration: worst relative error {worst:e}");
}

/// Batch-hard and semi-hard at the acceptance size.
#[test]
fn batch_hard_and_semi_hard_256x128() {
    let (classes, per_class, d) = (32, 8, 128);
    let labels = block_labels(classes, per_class);
    let x = Rng(0x5eed_0003).normals(labels.len() * d);
    let cases = [
        (Mining::BatchHard, Metric::Euclidean, Reduction::Sum, false),
        (
            Mining::SemiHard,
            Metric::SquaredEuclidean,
            Reduction::Mean,
            true,
        ),
    ];
    for (mining, metric, reduction, normalize) in cases {
        let p = BatchParams::new()
            .with_metric(metric)
            .with_mining(mining)
            .with_margin(0.2)
            .with_reduction(reduction)
            .with_normalize(normalize);
        let rel = batch_case(&format!("{p:?}"), &x, d, &labels, p);
        eprintln!("{mining:?} {metric:?} {reduction:?} normalize {normalize}: {rel:e}");
    }
}

// ---------------------------------------------------------------------------------------
// Explicit triplets.

/// Accumulating in `f32` loses row 0 entirely: its first contribution, about `-2e8`,
/// swallows the thousand `-0.5` that follow, and the last one cancels it back to 0. The
/// exact gradient of row 0 is `-500`.
#[test]
fn explicit_triplets_cancellation_row_0_is_minus_500() {
    let x = Matrix::new(&[0.0, 1e8, 0.25, 0.0], 4, 1).unwrap();
    let mut triplets = vec![Triplet::new(0, 1, 2)];
    triplets.extend(std::iter::repeat_n(Triplet::new(0, 2, 3), 1000));
    triplets.push(Triplet::new(0, 2, 1));
    let p = TripletParams::new()
        .with_metric(Metric::SquaredEuclidean)
        .with_margin(1e17)
        .with_reduction(Reduction::Sum);
    let mut terms = vec![0.0_f32; triplets.len()];
    let mut grad = [f32::NAN; 4];
    let mut ws = vec![f32::NAN; scalar::triplet_margin_loss_workspace_len(4, 1)];
    scalar::triplet_margin_loss_grad(x, &triplets, p, &mut terms, &mut grad, &mut ws).unwrap();
    assert_eq!(grad[0], -500.0);
    assert_eq!(grad, [-500.0, 0.0, 500.0, 0.0]);
}

/// `d(a, b)` with the shift `eps` of the difference vector, `d d / d a` and `d d / d b`.
fn dist_eps(metric: Metric, a: &[f64], b: &[f64], eps: f64) -> (f64, Vec<f64>, Vec<f64>) {
    if eps == 0.0 {
        let d = dist(metric, a, b);
        return (d, dist_grad(metric, a, b, d), dist_grad(metric, b, a, d));
    }
    let t: Vec<f64> = a.iter().zip(b).map(|(u, v)| u - v + eps).collect();
    let sq = dot(&t, &t);
    let (d, ga): (f64, Vec<f64>) = match metric {
        Metric::SquaredEuclidean => (sq, t.iter().map(|v| 2.0 * v).collect()),
        _ => {
            let d = sq.sqrt();
            (d, t.iter().map(|v| v / d).collect())
        }
    };
    let gb = ga.iter().map(|v| -v).collect();
    (d, ga, gb)
}

#[test]
fn explicit_triplets_swap_and_eps() {
    let (n, d, k) = (64, 32, 4_000);
    let mut rng = Rng(0x5eed_0004);
    let x = rng.normals(n * d);
    let xr = rows64(&x, d);
    let triplets: Vec<Triplet> = (0..k)
        .map(|_| {
            Triplet::new(
                rng.below(n) as u32,
                rng.below(n) as u32,
                rng.below(n) as u32,
            )
        })
        .collect();
    let m = Matrix::new(&x, n, d).unwrap();
    let mut worst = 0.0_f64;
    for metric in METRICS {
        for swap in [false, true] {
            for eps in [0.0_f32, 1e-3] {
                if metric == Metric::Cosine && eps != 0.0 {
                    continue;
                }
                for reduction in REDUCTIONS {
                    let p = TripletParams::new()
                        .with_metric(metric)
                        .with_margin(0.3)
                        .with_swap(swap)
                        .with_eps(eps)
                        .with_reduction(reduction);
                    // Exact: each term with the negative distance swap chose.
                    let e = f64::from(eps);
                    let parts: Vec<_> = triplets
                        .iter()
                        .map(|t| {
                            let [a, q, r] = [t.anchor, t.positive, t.negative].map(|i| i as usize);
                            let ap = dist_eps(metric, &xr[a], &xr[q], e);
                            let mut neg = (dist_eps(metric, &xr[a], &xr[r], e), a, r);
                            if swap {
                                let pn = dist_eps(metric, &xr[q], &xr[r], e);
                                if pn.0 < neg.0 .0 {
                                    neg = (pn, q, r);
                                }
                            }
                            let v = ap.0 - neg.0 .0 + f64::from(p.margin);
                            (v, (a, q, ap), (neg.1, neg.2, neg.0))
                        })
                        .collect();
                    let act = parts.iter().filter(|t| t.0 > 0.0).count();
                    let w = weight(reduction, k, act);
                    let loss = w * parts.iter().map(|t| t.0.max(0.0)).sum::<f64>();
                    let mut g = vec![vec![0.0; d]; n];
                    for (v, (a, q, (_, ga, gq)), (i, j, (_, gi, gj))) in &parts {
                        let c = w * slope(Hinge::Relu, *v);
                        if c != 0.0 {
                            axpy(c, ga, &mut g[*a]);
                            axpy(c, gq, &mut g[*q]);
                            axpy(-c, gi, &mut g[*i]);
                            axpy(-c, gj, &mut g[*j]);
                        }
                    }
                    let mut terms = vec![0.0_f32; k];
                    let mut grad = vec![f32::NAN; n * d];
                    let mut ws = vec![f32::NAN; scalar::triplet_margin_loss_workspace_len(n, d)];
                    let l = scalar::triplet_margin_loss_grad(
                        m, &triplets, p, &mut terms, &mut grad, &mut ws,
                    )
                    .unwrap();
                    let what = format!("{p:?}");
                    check_loss(&what, l, loss);
                    worst = worst.max(check_grad(&what, &grad, &flat(&g)));
                }
            }
        }
    }
    eprintln!("explicit triplets: worst relative error {worst:e}");
}

// ---------------------------------------------------------------------------------------
// Contrastive.

/// The contrastive loss over every ordered pair and its gradient.
fn contrastive_exact(
    xr: &[Vec<f64>],
    labels: &[u32],
    metric: Metric,
    p: &ContrastiveParams,
) -> (f64, Vec<f64>) {
    let n = xr.len();
    // (term, d term / d d, positive) per ordered pair.
    let mut pairs = vec![(0.0, 0.0, false); n * n];
    let (mut pc, mut pa, mut nc, mut na) = (0, 0, 0, 0);
    for i in 0..n {
        for j in 0..n {
            if i == j {
                continue;
            }
            let d = dist(metric, &xr[i], &xr[j]);
            let positive = labels[i] == labels[j];
            let (v, sign) = if positive {
                (d - f64::from(p.pos_margin), 1.0)
            } else {
                (f64::from(p.neg_margin) - d, -1.0)
            };
            let (t, s) = match p.form {
                ContrastiveForm::Linear => (v.max(0.0), if v > 0.0 { sign } else { 0.0 }),
                ContrastiveForm::Squared => {
                    let h = v.max(0.0);
                    (h * h, 2.0 * sign * h)
                }
                _ => unreachable!("a variant this test does not know"),
            };
            pairs[i * n + j] = (t, s, positive);
            if positive {
                pc += 1;
                pa += usize::from(t > 0.0);
            } else {
                nc += 1;
                na += usize::from(t > 0.0);
            }
        }
    }
    let (wp, wn) = match p.reduction {
        ContrastiveReduction::MeanNonzeroPerPart => (
            weight(Reduction::MeanNonzero, pc, pa),
            weight(Reduction::MeanNonzero, nc, na),
        ),
        ContrastiveReduction::MeanPerPart => (
            weight(Reduction::Mean, pc, pa),
            weight(Reduction::Mean, nc, na),
        ),
        ContrastiveReduction::Mean => {
            let w = weight(Reduction::Mean, pc + nc, 0);
            (w, w)
        }
        ContrastiveReduction::Sum => (1.0, 1.0),
        _ => unreachable!("a variant this test does not know"),
    };
    let mut loss = 0.0;
    let mut coef = vec![0.0; n * n];
    for (k, &(t, s, positive)) in pairs.iter().enumerate() {
        let w = if positive { wp } else { wn };
        loss += w * t;
        coef[k] = w * s;
    }
    (loss, flat(&pair_grad(metric, xr, &coef)))
}

#[test]
fn contrastive_both_forms_every_reduction() {
    let (classes, per_class, d) = (6, 8, 24);
    let labels = block_labels(classes, per_class);
    let n = labels.len();
    let x = Rng(0x5eed_0005).normals(n * d);
    let xr = rows64(&x, d);
    let m = Matrix::new(&x, n, d).unwrap();
    let mut worst = 0.0_f64;
    for metric in METRICS {
        // Margins at the 30th and 70th percentiles of the distances: both parts active.
        let mut all: Vec<f64> = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| dist(metric, &xr[i], &xr[j]))
            .collect();
        all.sort_by(f64::total_cmp);
        let (pos_margin, neg_margin) = (
            all[all.len() * 3 / 10] as f32,
            all[all.len() * 7 / 10] as f32,
        );
        for form in [ContrastiveForm::Linear, ContrastiveForm::Squared] {
            for reduction in [
                ContrastiveReduction::MeanNonzeroPerPart,
                ContrastiveReduction::MeanPerPart,
                ContrastiveReduction::Mean,
                ContrastiveReduction::Sum,
            ] {
                let p = ContrastiveParams::new(pos_margin, neg_margin)
                    .with_form(form)
                    .with_reduction(reduction);
                let (loss, exact) = contrastive_exact(&xr, &labels, metric, &p);
                let mut grad = vec![f32::NAN; n * d];
                let mut ws = vec![f32::NAN; scalar::contrastive_loss_workspace_len(n, d)];
                let l = scalar::contrastive_loss_grad(m, &labels, metric, p, &mut grad, &mut ws)
                    .unwrap();
                let what = format!("{metric:?} {p:?}");
                check_loss(&what, l, loss);
                worst = worst.max(check_grad(&what, &grad, &exact));
            }
        }
    }
    eprintln!("contrastive: worst relative error {worst:e}");
}

// ---------------------------------------------------------------------------------------
// Quadruplets.

#[test]
fn quadruplet_100k_quadruplets() {
    let (n, d, k) = (64, 16, 100_000);
    let mut rng = Rng(0x5eed_0006);
    let x = rng.normals(n * d);
    let xr = rows64(&x, d);
    let quads: Vec<Quadruplet> = (0..k)
        .map(|_| {
            Quadruplet::new(
                rng.below(n) as u32,
                rng.below(n) as u32,
                rng.below(n) as u32,
                rng.below(n) as u32,
            )
        })
        .collect();
    let m = Matrix::new(&x, n, d).unwrap();
    let cases = [
        (
            Metric::SquaredEuclidean,
            Hinge::Relu,
            Reduction::Sum,
            (4.0, 2.0),
        ),
        (
            Metric::Euclidean,
            Hinge::SoftPlus,
            Reduction::Mean,
            (0.0, 0.0),
        ),
        (
            Metric::Cosine,
            Hinge::Relu,
            Reduction::MeanNonzero,
            (0.1, 0.05),
        ),
    ];
    let mut worst = 0.0_f64;
    for (metric, h, reduction, (m1, m2)) in cases {
        let p = QuadrupletParams::new(m1, m2)
            .with_hinge(h)
            .with_reduction(reduction);
        let (mut sum, mut act) = (0.0, 0);
        let mut coef = vec![0.0; n * n];
        let mut values = Vec::with_capacity(k);
        for q in &quads {
            let [a, pp, n1, n2] = q.to_array().map(|i| i as usize);
            let dap = dist(metric, &xr[a], &xr[pp]);
            let v1 = dap - dist(metric, &xr[a], &xr[n1]) + f64::from(m1);
            let v2 = dap - dist(metric, &xr[n1], &xr[n2]) + f64::from(m2);
            sum += hinge(h, v1) + hinge(h, v2);
            act += usize::from(active(h, v1) || active(h, v2));
            values.push((a, pp, n1, n2, v1, v2));
        }
        let w = weight(reduction, k, act);
        // A pair of one row with itself has distance 0 whatever the row: no gradient.
        let mut add = |i: usize, j: usize, c: f64| {
            if i != j {
                coef[i * n + j] += c;
            }
        };
        for &(a, pp, n1, n2, v1, v2) in &values {
            let (s1, s2) = (w * slope(h, v1), w * slope(h, v2));
            add(a, pp, s1 + s2);
            add(a, n1, -s1);
            add(n1, n2, -s2);
        }
        let exact = flat(&pair_grad(metric, &xr, &coef));
        let mut grad = vec![f32::NAN; n * d];
        let mut ws = vec![f32::NAN; scalar::quadruplet_loss_workspace_len(n, d)];
        let l = scalar::quadruplet_loss_grad(m, &quads, metric, p, &mut grad, &mut ws).unwrap();
        let what = format!("{metric:?} {p:?}");
        check_loss(&what, l, w * sum);
        worst = worst.max(check_grad(&what, &grad, &exact));
    }
    eprintln!("quadruplet: worst relative error {worst:e}");
}

// ---------------------------------------------------------------------------------------
// Proxy losses.

struct ProxyData {
    n: usize,
    c: usize,
    d: usize,
    x: Vec<f32>,
    proxies: Vec<f32>,
    labels: Vec<u32>,
}

/// 64 rows, 8 proxies of dimension 32; the rows use 6 of the proxies only.
fn proxy_data(seed: u64) -> ProxyData {
    let (n, c, d) = (64, 8, 32);
    let mut rng = Rng(seed);
    ProxyData {
        n,
        c,
        d,
        x: rng.normals(n * d),
        proxies: rng.normals(c * d),
        labels: (0..n).map(|i| (i % 6) as u32).collect(),
    }
}

#[test]
fn proxy_nca_loss_and_both_gradients() {
    let pd = proxy_data(0x5eed_0007);
    let (n, c, d) = (pd.n, pd.c, pd.d);
    let xr = rows64(&pd.x, d);
    let pr = rows64(&pd.proxies, d);
    let unit = |r: &Vec<f64>| -> Vec<f64> {
        let k = clamped(norm(r));
        r.iter().map(|v| v / k).collect()
    };
    let (xh, ph): (Vec<_>, Vec<_>) = (xr.iter().map(unit).collect(), pr.iter().map(unit).collect());
    let m = Matrix::new(&pd.x, n, d).unwrap();
    let pm = Matrix::new(&pd.proxies, c, d).unwrap();
    for scale in [1.0_f32, 8.0] {
        let s = f64::from(scale);
        let mut loss = 0.0;
        let (mut gx, mut gp) = (vec![vec![0.0; d]; n], vec![vec![0.0; d]; c]);
        for i in 0..n {
            let q: Vec<f64> = ph
                .iter()
                .map(|p| dist(Metric::SquaredEuclidean, &xh[i], p))
                .collect();
            let z: f64 = q.iter().map(|v| (-s * v).exp()).sum();
            let y = pd.labels[i] as usize;
            loss += (s * q[y] + z.ln()) / n as f64;
            for k in 0..c {
                // d loss / d q_ik, then d q = 2 (x^ - p^) (d x^ - d p^).
                let t = f64::from(u8::from(k == y));
                let dq = s * (t - (-s * q[k]).exp() / z) / n as f64;
                let diff: Vec<f64> = xh[i]
                    .iter()
                    .zip(&ph[k])
                    .map(|(u, v)| 2.0 * (u - v))
                    .collect();
                axpy(dq, &diff, &mut gx[i]);
                axpy(-dq, &diff, &mut gp[k]);
            }
        }
        let gx: Vec<Vec<f64>> = xr
            .iter()
            .zip(&gx)
            .map(|(r, g)| through_normalization(r, g))
            .collect();
        let gp: Vec<Vec<f64>> = pr
            .iter()
            .zip(&gp)
            .map(|(r, g)| through_normalization(r, g))
            .collect();
        let (mut g, mut gpt) = (vec![f32::NAN; n * d], vec![f32::NAN; c * d]);
        let mut ws = vec![f32::NAN; scalar::proxy_nca_loss_workspace_len(n, c, d)];
        let params = ProxyNcaParams::new(scale);
        let l = scalar::proxy_nca_loss_grad(m, &pd.labels, pm, params, &mut g, &mut gpt, &mut ws)
            .unwrap();
        let what = format!("{params:?}");
        check_loss(&what, l, loss);
        let r1 = check_grad(&format!("{what} grad"), &g, &flat(&gx));
        let r2 = check_grad(&format!("{what} grad_proxies"), &gpt, &flat(&gp));
        eprintln!("proxy-NCA scale {scale}: grad {r1:e}, grad_proxies {r2:e}");
    }
}

#[test]
fn proxy_anchor_loss_and_both_gradients() {
    let pd = proxy_data(0x5eed_0008);
    let (n, c, d) = (pd.n, pd.c, pd.d);
    let xr = rows64(&pd.x, d);
    let pr = rows64(&pd.proxies, d);
    let m = Matrix::new(&pd.x, n, d).unwrap();
    let pm = Matrix::new(&pd.proxies, c, d).unwrap();
    for params in [
        ProxyAnchorParams::new(0.1, 32.0),
        ProxyAnchorParams::new(-0.2, 4.0),
    ] {
        let (alpha, delta) = (f64::from(params.alpha), f64::from(params.margin));
        let with_rows = (0..c)
            .filter(|&k| pd.labels.iter().any(|&l| l as usize == k))
            .count();
        let (wp, wn) = (1.0 / with_rows as f64, 1.0 / c as f64);
        let mut loss = 0.0;
        let (mut gx, mut gp) = (vec![vec![0.0; d]; n], vec![vec![0.0; d]; c]);
        for k in 0..c {
            // Exponents of the positive and negative sums (no shift needed in f64 here).
            let e: Vec<f64> = (0..n)
                .map(|i| {
                    let s = 1.0 - dist(Metric::Cosine, &xr[i], &pr[k]);
                    if pd.labels[i] as usize == k {
                        -alpha * (s - delta)
                    } else {
                        alpha * (s + delta)
                    }
                })
                .collect();
            let is_pos = |i: usize| pd.labels[i] as usize == k;
            let zp = 1.0
                + (0..n)
                    .filter(|&i| is_pos(i))
                    .map(|i| e[i].exp())
                    .sum::<f64>();
            let zn = 1.0
                + (0..n)
                    .filter(|&i| !is_pos(i))
                    .map(|i| e[i].exp())
                    .sum::<f64>();
            loss += wp * zp.ln() + wn * zn.ln();
            for i in 0..n {
                // d loss / d s_ik; s = 1 - cosine distance.
                let ds = if is_pos(i) {
                    -alpha * wp * e[i].exp() / zp
                } else {
                    alpha * wn * e[i].exp() / zn
                };
                let dist_ik = dist(Metric::Cosine, &xr[i], &pr[k]);
                axpy(
                    -ds,
                    &dist_grad(Metric::Cosine, &xr[i], &pr[k], dist_ik),
                    &mut gx[i],
                );
                axpy(
                    -ds,
                    &dist_grad(Metric::Cosine, &pr[k], &xr[i], dist_ik),
                    &mut gp[k],
                );
            }
        }
        let (mut g, mut gpt) = (vec![f32::NAN; n * d], vec![f32::NAN; c * d]);
        let mut ws = vec![f32::NAN; scalar::proxy_anchor_loss_workspace_len(n, c, d)];
        let l =
            scalar::proxy_anchor_loss_grad(m, &pd.labels, pm, params, &mut g, &mut gpt, &mut ws)
                .unwrap();
        let what = format!("{params:?}");
        check_loss(&what, l, loss);
        let r1 = check_grad(&format!("{what} grad"), &g, &flat(&gx));
        let r2 = check_grad(&format!("{what} grad_proxies"), &gpt, &flat(&gp));
        eprintln!("proxy-anchor {params:?}: grad {r1:e}, grad_proxies {r2:e}");
    }
}

// ---------------------------------------------------------------------------------------
// Errors with the twins' own workspace lengths.

/// The twins whose workspace differs from the fast kernel's report their own requirement
/// and otherwise refuse exactly as the fast kernel, in the same order: the checks before
/// the workspace win over a short workspace, a short workspace wins over those after it.
#[test]
fn twin_workspace_errors_keep_the_fast_order() {
    use triplet_kernels::Error;
    let short = |required: usize, actual: usize| Err(Error::WorkspaceTooSmall { required, actual });
    let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
    let mut bad = data.clone();
    bad[5] = f32::NAN;
    let (x, xb) = (
        Matrix::new(&data, 3, 4).unwrap(),
        Matrix::new(&bad, 3, 4).unwrap(),
    );
    let labels = [0, 0, 1];
    let mut g = vec![7.0_f32; 12];
    let mut ws = vec![0.0_f32; 64];

    // Contrastive: labels and grad, then the workspace, then parameters and data.
    let need = scalar::contrastive_loss_workspace_len(3, 4);
    assert_eq!(need, 12);
    let p = ContrastiveParams::default();
    let nan_p = ContrastiveParams::new(f32::NAN, 1.0);
    let m = Metric::Euclidean;
    assert_eq!(
        scalar::contrastive_loss_grad(x, &labels, m, p, &mut g, &mut ws[..need - 1]),
        short(need, need - 1)
    );
    assert_eq!(
        scalar::contrastive_loss_grad(x, &labels, m, nan_p, &mut g, &mut ws[..2]),
        short(need, 2)
    );
    assert_eq!(
        scalar::contrastive_loss(xb, &labels, m, p, &mut ws[..2]),
        short(need, 2)
    );
    assert!(matches!(
        scalar::contrastive_loss_grad(x, &labels[..2], m, p, &mut g, &mut []),
        Err(Error::LengthMismatch {
            buffer: "labels",
            ..
        })
    ));
    assert!(matches!(
        scalar::contrastive_loss_grad(x, &labels, m, p, &mut g[..3], &mut []),
        Err(Error::LengthMismatch { buffer: "grad", .. })
    ));
    // A twin that needs less than the fast kernel: its parameters are checked next.
    let x8 = Matrix::new(&data[..8], 8, 1).unwrap();
    let l8 = [0, 1, 0, 1, 0, 1, 0, 1];
    assert!(triplet_kernels::contrastive_loss_workspace_len(8, 1) > 8);
    assert_eq!(scalar::contrastive_loss_workspace_len(8, 1), 8);
    assert!(matches!(
        scalar::contrastive_loss_grad(x8, &l8, m, nan_p, &mut g[..8], &mut ws[..8]),
        Err(Error::InvalidParameter {
            name: "pos_margin",
            ..
        })
    ));
    let mut g8 = [0.0_f32; 8];
    assert!(scalar::contrastive_loss_grad(x8, &l8, m, p, &mut g8, &mut ws[..8]).is_ok());

    // Quadruplets: grad, then the workspace, then parameters, indices and data.
    let need = scalar::quadruplet_loss_workspace_len(3, 4);
    let quads = [Quadruplet::new(0, 1, 2, 0)];
    let qp = QuadrupletParams::new(1.0, 0.5);
    assert_eq!(
        scalar::quadruplet_loss_grad(x, &quads, m, qp, &mut g, &mut ws[..need - 1]),
        short(need, need - 1)
    );
    assert_eq!(
        scalar::quadruplet_loss(xb, &[Quadruplet::new(9, 0, 0, 0)], m, qp, &mut ws[..3]),
        short(need, 3)
    );
    assert!(matches!(
        scalar::quadruplet_loss_grad(x, &quads, m, qp, &mut g[..11], &mut []),
        Err(Error::LengthMismatch { buffer: "grad", .. })
    ));

    // Explicit triplets: parameters, terms and indices, then the workspace, then grad and
    // data.
    let need = scalar::triplet_margin_loss_workspace_len(3, 4);
    let ts = [Triplet::new(0, 1, 2)];
    let tp = TripletParams::new();
    let mut terms = [0.0_f32; 1];
    assert_eq!(
        scalar::triplet_margin_loss_grad(x, &ts, tp, &mut terms, &mut g, &mut ws[..need - 1]),
        short(need, need - 1)
    );
    assert_eq!(
        scalar::triplet_margin_loss_grad(xb, &ts, tp, &mut terms, &mut g[..1], &mut ws[..3]),
        short(need, 3)
    );
    assert!(matches!(
        scalar::triplet_margin_loss(x, &ts, tp.with_margin(f32::NAN), &mut terms, &mut []),
        Err(Error::InvalidParameter { name: "margin", .. })
    ));
    assert!(matches!(
        scalar::triplet_margin_loss(x, &[Triplet::new(0, 1, 7)], tp, &mut terms, &mut []),
        Err(Error::IndexOutOfRange { .. })
    ));

    // Batch: parameters, labels and grad, then the workspace, then data.
    for normalize in [false, true] {
        let bp = BatchParams::new().with_normalize(normalize);
        let need = scalar::triplet_batch_loss_grad_workspace_len(3, 4, bp);
        assert_eq!(need, if normalize { 24 } else { 12 });
        assert_eq!(
            scalar::triplet_batch_loss_grad(xb, &labels, bp, &mut g, &mut ws[..need - 1])
                .map(|o| o.loss),
            short(need, need - 1)
        );
        assert!(matches!(
            scalar::triplet_batch_loss_grad(x, &labels, bp, &mut g[..5], &mut []),
            Err(Error::LengthMismatch { buffer: "grad", .. })
        ));
    }

    // Proxies: shapes and grads, then the workspace, then parameters, labels and data.
    let proxies = Matrix::new(&data[..8], 2, 4).unwrap();
    let wide = Matrix::new(&data[..10], 2, 5).unwrap();
    let mut gp = [7.0_f32; 8];
    let need = scalar::proxy_nca_loss_workspace_len(3, 2, 4);
    assert_eq!(need, scalar::proxy_anchor_loss_workspace_len(3, 2, 4));
    let nca = ProxyNcaParams::new(f32::NAN);
    let anchor = ProxyAnchorParams::new(0.1, -1.0);
    assert_eq!(
        scalar::proxy_nca_loss_grad(x, &labels, proxies, nca, &mut g, &mut gp, &mut ws[..1]),
        short(need, 1)
    );
    assert_eq!(
        scalar::proxy_anchor_loss(xb, &labels, proxies, anchor, &mut ws[..need - 1]),
        short(need, need - 1)
    );
    assert_eq!(
        scalar::proxy_nca_loss(x, &labels, wide, nca, &mut []),
        Err(Error::DimensionMismatch { left: 4, right: 5 })
    );
    assert!(matches!(
        scalar::proxy_anchor_loss_grad(x, &labels, proxies, anchor, &mut g, &mut gp[..7], &mut []),
        Err(Error::LengthMismatch {
            buffer: "grad_proxies",
            ..
        })
    ));
    assert!(matches!(
        scalar::proxy_anchor_loss(x, &labels, proxies, anchor, &mut ws[..need]),
        Err(Error::InvalidParameter { name: "alpha", .. })
    ));
    // Nothing was written by a failing call.
    assert!(g.iter().chain(&gp).all(|&v| v == 7.0));
}
