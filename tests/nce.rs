//! NT-Xent, InfoNCE and SupCon: fast kernels against their `f64` twins over shapes on
//! both sides of the row block (128) and the register tiles, random batches (proptest),
//! finite differences of the twins, pml's zero-loss rules and the textbook options, the
//! sentence-transformers cross-entropy, small temperatures, the workspace's growth and
//! every error path.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use proptest::prelude::*;
use triplet_kernels::{
    infonce_loss, infonce_loss_grad, infonce_loss_workspace_len, ntxent_loss, ntxent_loss_grad,
    ntxent_loss_workspace_len, scalar, supcon_loss, supcon_loss_grad, supcon_loss_workspace_len,
    Error, Matrix, NceLoss, NtXentParams, SupConParams, SupConReduction,
};

/// Deterministic values in `(-1, 1)`.
fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Op {
    NtXent(NtXentParams),
    SupCon(SupConParams),
}

impl Op {
    fn temperature(self) -> f32 {
        match self {
            Op::NtXent(p) => p.temperature,
            Op::SupCon(p) => p.temperature,
        }
    }
}

/// The documents of the reference form.
type Docs<'a> = Option<(Matrix<'a>, &'a [u32])>;
type Out = (NceLoss, Vec<f32>, Vec<f32>);

/// The loss and gradients of the fast kernel (checking that the loss alone is the same,
/// bit for bit) or of the twin.
fn run(op: Op, x: Matrix<'_>, labels: &[u32], docs: Docs<'_>, twin: bool) -> Out {
    let (n, d) = (x.rows(), x.dim());
    let m = docs.map_or(0, |(y, _)| y.rows());
    let len = match docs {
        Some(_) => {
            infonce_loss_workspace_len(n, m, d).max(scalar::infonce_loss_workspace_len(n, m, d))
        }
        None => ntxent_loss_workspace_len(n, d).max(scalar::ntxent_loss_workspace_len(n, d)),
    };
    let mut ws = vec![f32::NAN; len];
    let mut g = vec![f32::NAN; x.len()];
    let mut gy = vec![f32::NAN; docs.map_or(0, |(y, _)| y.len())];
    let out = match (op, docs, twin) {
        (Op::NtXent(p), None, false) => ntxent_loss_grad(x, labels, p, &mut g, &mut ws),
        (Op::NtXent(p), None, true) => scalar::ntxent_loss_grad(x, labels, p, &mut g, &mut ws),
        (Op::NtXent(p), Some((y, ly)), false) => {
            infonce_loss_grad(x, labels, y, ly, p, &mut g, &mut gy, &mut ws)
        }
        (Op::NtXent(p), Some((y, ly)), true) => {
            scalar::infonce_loss_grad(x, labels, y, ly, p, &mut g, &mut gy, &mut ws)
        }
        (Op::SupCon(p), _, false) => supcon_loss_grad(x, labels, p, &mut g, &mut ws),
        (Op::SupCon(p), _, true) => scalar::supcon_loss_grad(x, labels, p, &mut g, &mut ws),
    }
    .unwrap();
    let mut ws = vec![f32::NAN; len];
    let alone = match (op, docs, twin) {
        (Op::NtXent(p), None, false) => ntxent_loss(x, labels, p, &mut ws),
        (Op::NtXent(p), None, true) => scalar::ntxent_loss(x, labels, p, &mut ws),
        (Op::NtXent(p), Some((y, ly)), false) => infonce_loss(x, labels, y, ly, p, &mut ws),
        (Op::NtXent(p), Some((y, ly)), true) => scalar::infonce_loss(x, labels, y, ly, p, &mut ws),
        (Op::SupCon(p), _, false) => supcon_loss(x, labels, p, &mut ws),
        (Op::SupCon(p), _, true) => scalar::supcon_loss(x, labels, p, &mut ws),
    }
    .unwrap();
    assert_eq!(alone, out, "loss alone and with gradients");
    (out, g, gy)
}

/// `(loss tolerance, gradient tolerance)` of the fast kernel against its twin: each cosine
/// is a sequential `f32` sum of `d` products of normalised rows (about `(d + 12) 2^-24`),
/// amplified by `1 / T` in the logits; each log-sum-exp sums `m` terms in `f32` lanes with
/// a polynomial exponential (`2^-22`); each gradient element sums `m` coefficient-weighted
/// rows. The gradient's tolerance is relative to its largest element, with a floor for
/// gradients that cancel to about 0 in the normalisation's backward (`d = 1`): the size
/// of a coefficient, `1 / T`, over the smallest row norm `rmin`.
fn tolerances(t: f32, loss: f32, gmax: f64, rmin: f64, m: usize, d: usize) -> (f64, f64) {
    let u = f64::from(f32::EPSILON) / 2.0;
    let z = 4.0 * (d as f64 + 12.0) / f64::from(t);
    let k = 8.0 * u * (z + m as f64 + d as f64 + 32.0);
    let floor = k / f64::from(t) / rmin;
    (k * (1.0 + f64::from(loss).abs()), 4.0 * k * gmax + floor)
}

fn assert_close_to_twin(what: &str, op: Op, x: Matrix<'_>, labels: &[u32], docs: Docs<'_>) {
    let (fl, fg, fgy) = run(op, x, labels, docs, false);
    let (tl, tg, tgy) = run(op, x, labels, docs, true);
    let m = docs.map_or(x.rows(), |(y, _)| y.rows());
    let gmax = tg
        .iter()
        .chain(&tgy)
        .fold(0.0_f64, |a, &v| a.max(f64::from(v).abs()));
    let norm = |r: &[f32]| {
        r.iter()
            .map(|&a| f64::from(a).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12)
    };
    let rmin = x
        .row_iter()
        .chain(docs.iter().flat_map(|(y, _)| y.row_iter()))
        .map(norm)
        .fold(f64::INFINITY, f64::min);
    let t = op.temperature();
    let (lt, gt) = tolerances(t, tl.loss, gmax, rmin, m.max(x.rows()), x.dim());
    assert!(
        fl.loss.is_finite() && fg.iter().chain(&fgy).all(|v| v.is_finite()),
        "{what}: non-finite"
    );
    assert_eq!(fl.num_terms, tl.num_terms, "{what}: terms");
    assert!(
        (f64::from(fl.loss) - f64::from(tl.loss)).abs() <= lt,
        "{what}: loss {} vs {}, tol {lt:e}",
        fl.loss,
        tl.loss
    );
    for (name, f, t) in [("grad", &fg, &tg), ("grad_y", &fgy, &tgy)] {
        for (k, (&a, &b)) in f.iter().zip(t.iter()).enumerate() {
            assert!(
                (f64::from(a) - f64::from(b)).abs() <= gt,
                "{what}: {name}[{k}] {a} vs {b}, tol {gt:e}"
            );
        }
    }
}

fn ops() -> Vec<Op> {
    vec![
        Op::NtXent(NtXentParams::pytorch_metric_learning()),
        Op::NtXent(NtXentParams::new(0.5).textbook()),
        Op::NtXent(NtXentParams::sentence_transformers()),
        Op::SupCon(SupConParams::pytorch_metric_learning()),
        Op::SupCon(SupConParams::new(0.07).textbook()),
        Op::SupCon(SupConParams::new(1.0)),
    ]
}

#[test]
fn fast_matches_the_twin() {
    let shapes = [
        (1, 1, 3),
        (2, 3, 1),
        (5, 4, 7),
        (33, 20, 16),
        (128, 130, 5),
        (129, 64, 33),
        (200, 257, 67),
    ];
    for (seed, &(n, m, d)) in shapes.iter().enumerate() {
        let xd = data(n * d, seed as u64 * 3 + 1);
        let yd = data(m * d, seed as u64 * 3 + 2);
        let x = Matrix::new(&xd, n, d).unwrap();
        let y = Matrix::new(&yd, m, d).unwrap();
        for classes in [1_u32, 2, (n as u32 / 4).max(1), n as u32] {
            let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % classes).collect();
            let y_labels: Vec<u32> = (0..m as u32).map(|j| (j * 5 + 1) % (classes + 2)).collect();
            for op in ops() {
                let what = format!("{op:?} n {n} m {m} d {d} classes {classes}");
                assert_close_to_twin(&what, op, x, &labels, None);
                if let Op::NtXent(_) = op {
                    assert_close_to_twin(
                        &format!("{what} ref"),
                        op,
                        x,
                        &labels,
                        Some((y, &y_labels)),
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_batches_match_the_twin(
        (n, m, d) in (1_usize..40, 1_usize..40, 1_usize..20),
        classes in 1_u32..8,
        seed in any::<u64>(),
        t in prop::sample::select(vec![0.05_f32, 0.07, 0.1, 0.3, 1.0, 2.0]),
        textbook in any::<bool>(),
    ) {
        let xd = data(n * d, seed);
        let yd = data(m * d, seed ^ 0x5555);
        let x = Matrix::new(&xd, n, d).unwrap();
        let y = Matrix::new(&yd, m, d).unwrap();
        let labels: Vec<u32> = data(n, seed ^ 1).iter().map(|v| ((v + 1.0) * 4.0) as u32 % classes).collect();
        let y_labels: Vec<u32> = data(m, seed ^ 2).iter().map(|v| ((v + 1.0) * 4.0) as u32 % (classes + 1)).collect();
        let mut nt = NtXentParams::new(t);
        let mut sc = SupConParams::new(t);
        if textbook {
            nt = nt.textbook();
            sc = sc.textbook();
        }
        assert_close_to_twin("ntxent", Op::NtXent(nt), x, &labels, None);
        assert_close_to_twin("infonce", Op::NtXent(nt), x, &labels, Some((y, &y_labels)));
        assert_close_to_twin("supcon", Op::SupCon(sc), x, &labels, None);
    }
}

/// Central differences of the twin's loss (in `f64` through `f32` inputs) against its
/// gradients, for every family; the fast kernel is held to the twin above.
#[test]
fn twin_gradients_match_finite_differences() {
    let (n, m, d) = (6, 5, 3);
    let xd = data(n * d, 11);
    let yd = data(m * d, 12);
    let labels = [0_u32, 1, 0, 2, 1, 0];
    let y_labels = [1_u32, 0, 7, 2, 0];
    let cases: [(Op, bool); 5] = [
        (Op::NtXent(NtXentParams::new(0.5)), false),
        (Op::NtXent(NtXentParams::new(0.5)), true),
        (
            Op::NtXent(NtXentParams::sentence_transformers().with_temperature(0.3)),
            true,
        ),
        (Op::SupCon(SupConParams::new(0.5)), false),
        (Op::SupCon(SupConParams::new(0.4).textbook()), false),
    ];
    for (op, reference) in cases {
        let loss_at = |xv: &[f32], yv: &[f32]| {
            let x = Matrix::new(xv, n, d).unwrap();
            let y = Matrix::new(yv, m, d).unwrap();
            let docs = reference.then_some((y, &y_labels[..]));
            f64::from(run(op, x, &labels, docs, true).0.loss)
        };
        let x = Matrix::new(&xd, n, d).unwrap();
        let y = Matrix::new(&yd, m, d).unwrap();
        let (_, g, gy) = run(
            op,
            x,
            &labels,
            reference.then_some((y, &y_labels[..])),
            true,
        );
        let h = 1e-3_f32;
        for k in 0..xd.len() {
            let (mut up, mut down) = (xd.clone(), xd.clone());
            up[k] += h;
            down[k] -= h;
            let fd = (loss_at(&up, &yd) - loss_at(&down, &yd)) / f64::from(up[k] - down[k]);
            assert!(
                (fd - f64::from(g[k])).abs() < 2e-3,
                "{op:?} x[{k}]: {fd} vs {}",
                g[k]
            );
        }
        if reference {
            for k in 0..yd.len() {
                let (mut up, mut down) = (yd.clone(), yd.clone());
                up[k] += h;
                down[k] -= h;
                let fd = (loss_at(&xd, &up) - loss_at(&xd, &down)) / f64::from(up[k] - down[k]);
                assert!(
                    (fd - f64::from(gy[k])).abs() < 2e-3,
                    "{op:?} y[{k}]: {fd} vs {}",
                    gy[k]
                );
            }
        }
    }
}

/// sentence-transformers' loss: the cross-entropy of `20 cos(q_i, d_j)` over all
/// documents (hard negatives included) with target `i`, computed here in `f64`.
#[test]
fn sentence_transformers_preset_is_the_cross_entropy() {
    let (n, extra, d) = (37, 11, 24);
    let xd = data(n * d, 31);
    let yd = data((n + extra) * d, 32);
    let x = Matrix::new(&xd, n, d).unwrap();
    let y = Matrix::new(&yd, n + extra, d).unwrap();
    let labels: Vec<u32> = (0..n as u32).collect();
    let y_labels: Vec<u32> = (0..(n + extra) as u32).collect();
    let norm = |v: &[f32]| v.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>().sqrt();
    let mut want = 0.0;
    for (i, q) in xd.chunks_exact(d).enumerate() {
        let logits: Vec<f64> = yd
            .chunks_exact(d)
            .map(|doc| {
                let dot: f64 = q
                    .iter()
                    .zip(doc)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                20.0 * dot / (norm(q) * norm(doc))
            })
            .collect();
        let mx = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + logits.iter().map(|l| (l - mx).exp()).sum::<f64>().ln();
        want += lse - logits[i];
    }
    want /= n as f64;
    let p = NtXentParams::sentence_transformers();
    let (out, _, _) = run(Op::NtXent(p), x, &labels, Some((y, &y_labels)), false);
    assert_eq!(out.num_terms, n);
    assert!(
        (f64::from(out.loss) - want).abs() < 1e-4 * (1.0 + want),
        "{} vs {want}",
        out.loss
    );
}

#[test]
fn pml_zero_rules_and_textbook_options() {
    // One query, one positive and one negative document: pml gives 0, the formula
    // ln(1 + e^{(s_n - s_p)/T}).
    let q = [1.0_f32, 0.0];
    let docs = [1.0_f32, 1.0, 0.0, 1.0];
    let x = Matrix::new(&q, 1, 2).unwrap();
    let y = Matrix::new(&docs, 2, 2).unwrap();
    let t = 0.5_f32;
    for twin in [false, true] {
        let pml = run(
            Op::NtXent(NtXentParams::new(t)),
            x,
            &[0],
            Some((y, &[0, 1])),
            twin,
        );
        assert_eq!(pml.0.loss, 0.0);
        assert_eq!(pml.0.num_terms, 0);
        assert!(pml.1.iter().chain(&pml.2).all(|&g| g == 0.0));
        let tb = run(
            Op::NtXent(NtXentParams::new(t).textbook()),
            x,
            &[0],
            Some((y, &[0, 1])),
            twin,
        );
        let sp = 0.5_f64.sqrt();
        let want = (1.0 + ((0.0 - sp) / f64::from(t)).exp()).ln();
        assert!(
            (f64::from(tb.0.loss) - want).abs() < 1e-6,
            "{} vs {want}",
            tb.0.loss
        );
        assert!(tb.1.iter().any(|&g| g != 0.0));
    }
    // A one-class batch: SupCon is 0 in pml's form, at least ln(n - 1) in the textbook
    // form; NT-Xent (no negatives) is 0 in both.
    let xd = data(5 * 3, 41);
    let x = Matrix::new(&xd, 5, 3).unwrap();
    let labels = [4_u32; 5];
    for twin in [false, true] {
        let pml = run(Op::SupCon(SupConParams::new(0.2)), x, &labels, None, twin);
        assert_eq!((pml.0.loss, pml.0.num_terms), (0.0, 0));
        assert!(pml.1.iter().all(|&g| g == 0.0));
        let tb = run(
            Op::SupCon(SupConParams::new(0.2).textbook()),
            x,
            &labels,
            None,
            twin,
        );
        assert!(f64::from(tb.0.loss) >= 4.0_f64.ln() - 1e-6);
        assert_eq!(tb.0.num_terms, 5);
        for p in [NtXentParams::new(0.2), NtXentParams::new(0.2).textbook()] {
            let nt = run(Op::NtXent(p), x, &labels, None, twin);
            assert_eq!(nt.0.loss, 0.0);
        }
    }
    // SupCon over rows with and without positives: the textbook mean counts every row.
    let xd = data(6 * 4, 42);
    let x = Matrix::new(&xd, 6, 4).unwrap();
    let labels = [0_u32, 0, 1, 2, 3, 0];
    let pml = run(Op::SupCon(SupConParams::new(0.3)), x, &labels, None, false);
    let tb = run(
        Op::SupCon(SupConParams::new(0.3).with_reduction(SupConReduction::Mean)),
        x,
        &labels,
        None,
        false,
    );
    assert_eq!((pml.0.num_terms, tb.0.num_terms), (3, 6));
    assert!((pml.0.loss * 3.0 - tb.0.loss * 6.0).abs() < 1e-4);
    // Rows whose positive is far nearer than their negative: `l_i = ln(1 + e^{-2/T})`,
    // about 4e-13 at T = 0.07, is 0 after `f32` rounding but positive in exact
    // arithmetic, so both rows with a positive count, in the kernel and the twin alike
    // (pml's `f32` reducer would drop them and report 0 terms).
    let x = Matrix::new(&[1.0_f32, 1.0, -1.0], 3, 1).unwrap();
    for twin in [false, true] {
        let out = run(
            Op::SupCon(SupConParams::new(0.07)),
            x,
            &[0, 0, 1],
            None,
            twin,
        );
        assert_eq!(out.0.num_terms, 2, "twin {twin}");
        assert!(
            (0.0..1e-6).contains(&out.0.loss),
            "twin {twin}: {}",
            out.0.loss
        );
        assert!(out.1.iter().all(|g| g.is_finite()));
    }
}

#[test]
fn small_temperatures_stay_finite() {
    let (n, d) = (150, 8);
    let xd = data(n * d, 51);
    let x = Matrix::new(&xd, n, d).unwrap();
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 9).collect();
    for t in [1e-3_f32, 1e-6, 1e-30] {
        for op in [
            Op::NtXent(NtXentParams::new(t)),
            Op::SupCon(SupConParams::new(t)),
        ] {
            let (out, g, _) = run(op, x, &labels, None, false);
            assert!(
                out.loss.is_finite() && out.loss >= 0.0,
                "{op:?}: {}",
                out.loss
            );
            assert!(g.iter().all(|v| v.is_finite()), "{op:?}");
        }
    }
}

#[test]
fn workspace_grows_like_rows_times_dim() {
    for (n, d) in [(1_000, 64), (100_000, 128), (1_000_000, 256)] {
        let len = ntxent_loss_workspace_len(n, d);
        assert!(
            len <= 4 * n * (d + 1) + 200 * n + 100_000,
            "{n} x {d}: {len}"
        );
        assert_eq!(supcon_loss_workspace_len(n, d), len);
        let len = infonce_loss_workspace_len(n, n, d);
        assert!(
            len <= 6 * n * (d + 1) + 200 * n + 100_000,
            "{n} x {d}: {len}"
        );
    }
    assert_eq!(ntxent_loss_workspace_len(usize::MAX, 3), usize::MAX);
}

#[test]
fn errors_in_order() {
    let xd = data(4 * 3, 61);
    let yd = data(5 * 3, 62);
    let x = Matrix::new(&xd, 4, 3).unwrap();
    let y = Matrix::new(&yd, 5, 3).unwrap();
    let y2 = Matrix::new(&yd, 3, 5).unwrap();
    let labels = [0_u32, 1, 0, 1];
    let yl = [0_u32, 1, 2, 3, 4];
    let p = NtXentParams::default();
    let mut ws = vec![0.0_f32; infonce_loss_workspace_len(4, 5, 3)];
    let (mut g, mut gy) = (vec![0.0_f32; 12], vec![0.0_f32; 15]);
    assert_eq!(
        infonce_loss(x, &labels, y2, &yl[..3], p, &mut ws),
        Err(Error::DimensionMismatch { left: 3, right: 5 })
    );
    assert!(matches!(
        infonce_loss(x, &labels[..3], y, &yl, p, &mut ws),
        Err(Error::LengthMismatch {
            buffer: "labels",
            ..
        })
    ));
    assert!(matches!(
        infonce_loss(x, &labels, y, &yl[..4], p, &mut ws),
        Err(Error::LengthMismatch {
            buffer: "y_labels",
            ..
        })
    ));
    assert!(matches!(
        infonce_loss_grad(x, &labels, y, &yl, p, &mut g[..11], &mut gy, &mut ws),
        Err(Error::LengthMismatch { buffer: "grad", .. })
    ));
    assert!(matches!(
        infonce_loss_grad(x, &labels, y, &yl, p, &mut g, &mut gy[..14], &mut ws),
        Err(Error::LengthMismatch {
            buffer: "grad_y",
            ..
        })
    ));
    let short = infonce_loss_workspace_len(4, 5, 3) - 1;
    assert!(matches!(
        infonce_loss(x, &labels, y, &yl, p, &mut ws[..short]),
        Err(Error::WorkspaceTooSmall { .. })
    ));
    for t in [0.0_f32, -1.0, f32::NAN, f32::INFINITY, 1e-45] {
        assert!(
            matches!(
                infonce_loss(x, &labels, y, &yl, p.with_temperature(t), &mut ws),
                Err(Error::InvalidParameter {
                    name: "temperature",
                    ..
                })
            ),
            "{t}"
        );
        assert!(matches!(
            supcon_loss(x, &labels, SupConParams::new(t), &mut ws),
            Err(Error::InvalidParameter {
                name: "temperature",
                ..
            })
        ));
    }
    let mut bad = xd.clone();
    bad[4] = f32::NAN;
    let xb = Matrix::new(&bad, 4, 3).unwrap();
    assert_eq!(
        ntxent_loss_grad(xb, &labels, p, &mut g, &mut ws),
        Err(Error::NonFinite {
            buffer: "x",
            row: 1,
            col: 1
        })
    );
    let mut bad = yd.clone();
    bad[14] = f32::INFINITY;
    let yb = Matrix::new(&bad, 5, 3).unwrap();
    assert_eq!(
        infonce_loss(x, &labels, yb, &yl, p, &mut ws),
        Err(Error::NonFinite {
            buffer: "y",
            row: 4,
            col: 2
        })
    );
    // The twins: the same errors, their own workspace requirement.
    assert_eq!(
        scalar::infonce_loss(x, &labels, yb, &yl, p, &mut ws),
        Err(Error::NonFinite {
            buffer: "y",
            row: 4,
            col: 2
        })
    );
    assert_eq!(
        scalar::supcon_loss(x, &labels, SupConParams::default(), &mut ws[..11]),
        Err(Error::WorkspaceTooSmall {
            required: 12,
            actual: 11
        })
    );
    assert!(matches!(
        scalar::ntxent_loss_grad(x, &labels[..1], p, &mut g, &mut ws[..1]),
        Err(Error::LengthMismatch {
            buffer: "labels",
            ..
        })
    ));
}
