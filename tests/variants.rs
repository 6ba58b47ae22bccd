//! Contrastive, quadruplet, Proxy-NCA and Proxy-Anchor losses: fast kernels against their
//! scalar twins, scalar gradients against central finite differences, degenerate batches,
//! dirty buffers and every error path.

use proptest::prelude::*;
use triplet_kernels::{Matrix, Metric};

use testkit::bounds::assert_proxy_close;
use testkit::rows::{dist64, dist_scale, norm};
use testkit::strategies::{int_value, value};
use testkit::{assert_close, bits, EPS, METRICS};

/// Moderate values for finite differences.
fn small_value() -> impl Strategy<Value = f32> + Clone {
    -2.0_f32..2.0
}

/// `(rows, dim, data, labels)` with labels in `0..classes`.
fn batch(
    rows: impl Strategy<Value = usize>,
    dim: impl Strategy<Value = usize>,
    classes: impl Strategy<Value = u32>,
    v: impl Strategy<Value = f32> + Clone,
) -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<u32>)> {
    (rows, dim, classes).prop_flat_map(move |(r, d, k)| {
        (
            Just(r),
            Just(d),
            proptest::collection::vec(v.clone(), r * d),
            proptest::collection::vec(0..k, r),
        )
    })
}

/// A deterministic pseudo-random generator for the larger fixed cases.
fn lcg(seed: u32) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state as f32 / u32::MAX as f32) * 4.0 - 2.0
    }
}

mod contrastive {
    use super::*;
    use testkit::contrastive::{term, tolerances, Pairs};
    use triplet_kernels::{
        contrastive_loss, contrastive_loss_grad, contrastive_loss_workspace_len, scalar,
        ContrastiveForm, ContrastiveParams, ContrastiveReduction, Error,
    };

    const REDUCTIONS: [ContrastiveReduction; 4] = [
        ContrastiveReduction::MeanNonzeroPerPart,
        ContrastiveReduction::MeanPerPart,
        ContrastiveReduction::Mean,
        ContrastiveReduction::Sum,
    ];
    const FORMS: [ContrastiveForm; 2] = [ContrastiveForm::Linear, ContrastiveForm::Squared];

    /// Fast vs scalar for one configuration; `Err` on a mismatch.
    fn run(x: Matrix<'_>, labels: &[u32], metric: Metric, pairs: &Pairs, p: ContrastiveParams) {
        let (n, d) = (x.rows(), x.dim());
        let Some((loss_tol, row_tol)) = tolerances(d, pairs, labels, &p) else {
            return;
        };
        let mut ws = vec![
            f32::NAN;
            contrastive_loss_workspace_len(n, d)
                .max(scalar::contrastive_loss_workspace_len(n, d))
        ];
        let (mut gf, mut gs) = (vec![f32::NAN; n * d], vec![f32::NAN; n * d]);
        let lf = contrastive_loss_grad(x, labels, metric, p, &mut gf, &mut ws).unwrap();
        // Garbage in the workspace and the output does not matter.
        ws.fill(-3.5);
        let mut again = vec![1e30_f32; n * d];
        let lf2 = contrastive_loss_grad(x, labels, metric, p, &mut again, &mut ws).unwrap();
        assert_eq!((lf.to_bits(), bits(&gf)), (lf2.to_bits(), bits(&again)));
        ws.fill(f32::NAN);
        let lf3 = contrastive_loss(x, labels, metric, p, &mut ws).unwrap();
        assert_eq!(lf.to_bits(), lf3.to_bits(), "loss-only call");
        let ls = scalar::contrastive_loss_grad(x, labels, metric, p, &mut gs, &mut ws).unwrap();
        let ls2 = scalar::contrastive_loss(x, labels, metric, p, &mut ws).unwrap();
        assert_eq!(ls.to_bits(), ls2.to_bits());
        assert!(
            (f64::from(lf) - f64::from(ls)).abs() <= loss_tol,
            "{metric:?} {p:?}: loss fast {lf} scalar {ls} tol {loss_tol}"
        );
        assert_close(&format!("{metric:?} {p:?} grad"), &gf, &gs, |k| {
            row_tol[k / d]
        });
    }

    /// Margins placed among the batch's own distances so that both parts are active.
    fn margins(pairs: &Pairs, u: f64, v: f64) -> (f32, f32) {
        let n = pairs.n;
        let mut all: Vec<f64> = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| pairs.d[i * n + j])
            .collect();
        all.sort_by(f64::total_cmp);
        let med = all.get(all.len() / 2).copied().unwrap_or(1.0);
        ((med * u) as f32, (med * v) as f32)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn matches_scalar(
            (n, d, data, labels) in batch(1usize..=33, 1usize..=67, 1u32..=5, value()),
            u in 0.0f64..1.5,
            v in 0.5f64..2.0,
        ) {
            let x = Matrix::new(&data, n, d).unwrap();
            for metric in METRICS {
                let pairs = Pairs::new(&x, metric);
                let (pm, nm) = margins(&pairs, u, v);
                for form in FORMS {
                    for r in REDUCTIONS {
                        let p = ContrastiveParams::new(pm, nm).with_form(form).with_reduction(r);
                        run(x, &labels, metric, &pairs, p);
                    }
                }
            }
        }

        /// Small-integer data and margins: distances are exact, so both kernels take the
        /// same decisions even for terms exactly at their kink.
        #[test]
        fn integers_same_decisions(
            (n, d, data, labels) in batch(1usize..=20, 1usize..=12, 1u32..=4, int_value()),
            pm in 0i32..40,
            nm in 0i32..200,
        ) {
            let x = Matrix::new(&data, n, d).unwrap();
            let mut ws = vec![f32::NAN; contrastive_loss_workspace_len(n, d).max(scalar::contrastive_loss_workspace_len(n, d))];
            for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
                for form in FORMS {
                    for r in REDUCTIONS {
                        let p = ContrastiveParams::new(pm as f32, nm as f32)
                            .with_form(form)
                            .with_reduction(r);
                        let (mut gf, mut gs) = (vec![0.0; n * d], vec![0.0; n * d]);
                        let lf = contrastive_loss_grad(x, &labels, metric, p, &mut gf, &mut ws).unwrap();
                        let ls = scalar::contrastive_loss_grad(x, &labels, metric, p, &mut gs, &mut ws).unwrap();
                        let scale = f64::from(ls.abs()) + 1.0;
                        prop_assert!((f64::from(lf) - f64::from(ls)).abs() <= 1e-5 * scale, "{lf} vs {ls}");
                        let gmax = gs.iter().fold(1.0_f32, |m, v| m.max(v.abs()));
                        for (a, b) in gf.iter().zip(&gs) {
                            prop_assert!((a - b).abs() <= 1e-5 * gmax, "{a} vs {b}");
                        }
                    }
                }
            }
        }

        /// The scalar gradient against central finite differences of the scalar loss.
        #[test]
        fn scalar_gradient_matches_finite_differences(
            (n, d, data, labels) in batch(2usize..=7, 1usize..=5, 1u32..=3, small_value()),
            u in 0.0f64..1.2,
            v in 0.6f64..1.8,
        ) {
            // Rows away from 0, where the cosine distance jumps.
            prop_assume!(data.chunks(d).all(|r| norm(r) > 0.3));
            let x = Matrix::new(&data, n, d).unwrap();
            let mut ws = vec![0.0; contrastive_loss_workspace_len(n, d).max(scalar::contrastive_loss_workspace_len(n, d))];
            for metric in METRICS {
                let (pm, nm) = margins(&Pairs::new(&x, metric), u, v);
                for form in FORMS {
                    for r in REDUCTIONS {
                        let p = ContrastiveParams::new(pm, nm).with_form(form).with_reduction(r);
                        let mut g = vec![0.0; n * d];
                        scalar::contrastive_loss_grad(x, &labels, metric, p, &mut g, &mut ws).unwrap();
                        let loss_at = |data: &[f32], ws: &mut [f32]| {
                            let x = Matrix::new(data, n, d).unwrap();
                            f64::from(scalar::contrastive_loss(x, &labels, metric, p, ws).unwrap())
                        };
                        let status = |data: &[f32]| {
                            let x = Matrix::new(data, n, d).unwrap();
                            let rows: Vec<&[f32]> = x.row_iter().collect();
                            let mut s = Vec::new();
                            for i in 0..n {
                                for j in 0..n {
                                    if i != j {
                                        let dv = dist64(metric, rows[i], rows[j]);
                                        s.push(term(&p, labels[i] == labels[j], dv).0);
                                        // The Euclidean distance is not smooth at 0.
                                        s.push(dv);
                                    }
                                }
                            }
                            s
                        };
                        fd_check(&data, &g, 1e-3, &mut ws, loss_at, status);
                    }
                }
            }
        }
    }

    /// Central differences of `loss_at` at every coordinate against `grad`, skipping the
    /// coordinates whose step moves a hinge argument (from `status`) across or near 0.
    pub(crate) fn fd_check(
        data: &[f32],
        grad: &[f32],
        h: f32,
        ws: &mut [f32],
        loss_at: impl Fn(&[f32], &mut [f32]) -> f64,
        status: impl Fn(&[f32]) -> Vec<f64>,
    ) {
        let gmax = grad.iter().fold(0.0_f64, |m, &v| m.max(f64::from(v).abs()));
        let l0 = loss_at(data, ws).abs();
        let mut p = data.to_vec();
        for k in 0..data.len() {
            p[k] = data[k] + h;
            let up = p[k];
            let (lu, su) = (loss_at(&p, ws), status(&p));
            p[k] = data[k] - h;
            let down = p[k];
            let (ld, sd) = (loss_at(&p, ws), status(&p));
            p[k] = data[k];
            let s0 = status(data);
            let kink = s0.iter().zip(&su).zip(&sd).any(|((&a, &b), &c)| {
                a.signum() != b.signum() || a.signum() != c.signum() || a.abs() < 1e-2
            });
            if kink {
                continue;
            }
            let fd = (lu - ld) / (f64::from(up) - f64::from(down));
            let tol = 2e-3 * (gmax + 1e-2) + 8.0 * EPS * l0 / f64::from(h);
            let g = f64::from(grad[k]);
            assert!(
                (fd - g).abs() <= tol,
                "coordinate {k}: finite difference {fd}, gradient {g}, tol {tol}"
            );
        }
    }

    #[test]
    fn one_large_case() {
        let (n, d) = (120, 131);
        let mut next = lcg(0x9e37_79b9);
        let data: Vec<f32> = (0..n * d).map(|_| next()).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 7).collect();
        let x = Matrix::new(&data, n, d).unwrap();
        for metric in METRICS {
            let pairs = Pairs::new(&x, metric);
            let (pm, nm) = margins(&pairs, 0.8, 1.1);
            for r in REDUCTIONS {
                let p = ContrastiveParams::new(pm, nm).with_reduction(r);
                run(x, &labels, metric, &pairs, p);
            }
        }
    }

    #[test]
    fn presets() {
        assert_eq!(
            ContrastiveParams::default(),
            ContrastiveParams::pytorch_metric_learning()
        );
        let p = ContrastiveParams::pytorch_metric_learning();
        assert_eq!((p.pos_margin, p.neg_margin), (0.0, 1.0));
        assert_eq!(p.form, ContrastiveForm::Linear);
        assert_eq!(p.reduction, ContrastiveReduction::MeanNonzeroPerPart);
        let h = ContrastiveParams::hadsell(2.0);
        assert_eq!(
            (h.pos_margin, h.neg_margin, h.form, h.reduction),
            (
                0.0,
                2.0,
                ContrastiveForm::Squared,
                ContrastiveReduction::Mean
            )
        );
    }

    /// Hadsell's form by hand: d^2 for positives, relu(m - d)^2 for negatives, mean over
    /// the n (n - 1) ordered pairs.
    #[test]
    fn hadsell_by_hand() {
        let x = Matrix::new(&[0.0, 1.0, 3.0], 3, 1).unwrap();
        let labels = [0, 0, 1];
        let mut ws = [0.0; contrastive_loss_workspace_len(3, 1)];
        let mut g = [0.0; 3];
        let loss = contrastive_loss_grad(
            x,
            &labels,
            Metric::Euclidean,
            ContrastiveParams::hadsell(2.5),
            &mut g,
            &mut ws,
        )
        .unwrap();
        // (0,1): 1; (0,2): relu(2.5 - 3)^2 = 0; (1,2): 0.5^2 = 0.25. Each twice, / 6.
        let want = 2.0 * (1.0 + 0.25) / 6.0;
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
        // d/dx0 = 2 * (2 d01 * (x0 - x1)/d01) / 6 = -4/6; x2: 2 * (-2 * 0.5) / 6 = -2/6.
        let want_g = [-4.0 / 6.0, 4.0 / 6.0 + 2.0 / 6.0, -2.0 / 6.0];
        for (a, b) in g.iter().zip(want_g) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
    }

    #[test]
    fn degenerate_batches() {
        let mut ws = vec![
            f32::NAN;
            contrastive_loss_workspace_len(4, 2)
                .max(scalar::contrastive_loss_workspace_len(4, 2))
        ];
        for metric in METRICS {
            for r in REDUCTIONS {
                let p = ContrastiveParams::new(0.1, 1.0).with_reduction(r);
                // One row: no pairs at all.
                let x = Matrix::new(&[1.0, 2.0], 1, 2).unwrap();
                let mut g = [f32::NAN; 2];
                assert_eq!(
                    contrastive_loss_grad(x, &[3], metric, p, &mut g, &mut ws),
                    Ok(0.0)
                );
                assert_eq!(g, [0.0, 0.0]);
                assert_eq!(
                    scalar::contrastive_loss_grad(x, &[3], metric, p, &mut g, &mut ws),
                    Ok(0.0)
                );
                // Every row its own class (no positive part), duplicate and zero rows.
                let data = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
                let x = Matrix::new(&data, 4, 2).unwrap();
                for labels in [[0, 1, 2, 3], [5, 5, 5, 5], [0, 0, 1, 1]] {
                    let mut gf = [f32::NAN; 8];
                    let mut gs = [f32::NAN; 8];
                    let lf =
                        contrastive_loss_grad(x, &labels, metric, p, &mut gf, &mut ws).unwrap();
                    let ls = scalar::contrastive_loss_grad(x, &labels, metric, p, &mut gs, &mut ws)
                        .unwrap();
                    assert!(
                        lf.is_finite() && gf.iter().all(|v| v.is_finite()),
                        "{metric:?} {labels:?}"
                    );
                    assert!((lf - ls).abs() <= 1e-6 * (1.0 + ls.abs()), "{lf} vs {ls}");
                    // Zero rows under cosine get the clamped derivative, of order 1e12.
                    let gmax = gs.iter().fold(1.0_f32, |m, v| m.max(v.abs()));
                    for (a, b) in gf.iter().zip(&gs) {
                        assert!(
                            (a - b).abs() <= 1e-5 * gmax,
                            "{metric:?} {labels:?}: {gf:?} vs {gs:?}"
                        );
                    }
                    if labels == [5, 5, 5, 5] {
                        // No negative pair; every positive pair of duplicates has d = 0.
                        if metric != Metric::Cosine {
                            assert!(lf > 0.0);
                        }
                    }
                }
            }
        }
        // Duplicate rows under the Euclidean metric: distance 0, zero gradient, not NaN.
        let x = Matrix::new(&[1.0, 1.0, 1.0, 1.0], 2, 2).unwrap();
        let mut g = [f32::NAN; 4];
        let loss = contrastive_loss_grad(
            x,
            &[0, 1],
            Metric::Euclidean,
            ContrastiveParams::new(0.0, 1.0),
            &mut g,
            &mut ws,
        )
        .unwrap();
        assert_eq!((loss, g), (1.0, [0.0; 4]));
    }

    #[test]
    fn every_error_path() {
        let data = [1.0_f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let x = Matrix::new(&data, 3, 2).unwrap();
        let labels = [0, 0, 1];
        let good = ContrastiveParams::default();
        assert_eq!(contrastive_loss_workspace_len(3, 2), 3 + 3);
        assert_eq!(scalar::contrastive_loss_workspace_len(3, 2), 3 * 2);
        let mut ws = vec![0.0_f32; 64];
        let mut g = [7.0_f32; 6];
        type Loss =
            fn(Matrix<'_>, &[u32], Metric, ContrastiveParams, &mut [f32]) -> Result<f32, Error>;
        type Grad = fn(
            Matrix<'_>,
            &[u32],
            Metric,
            ContrastiveParams,
            &mut [f32],
            &mut [f32],
        ) -> Result<f32, Error>;
        let bad_x = [1.0_f32, 2.0, f32::INFINITY, 4.0, f32::NAN, 6.0];
        let xb = Matrix::new(&bad_x, 3, 2).unwrap();
        type Len = fn(usize, usize) -> usize;
        for (loss, grad, len) in [
            (
                contrastive_loss as Loss,
                contrastive_loss_grad as Grad,
                contrastive_loss_workspace_len as Len,
            ),
            (
                scalar::contrastive_loss,
                scalar::contrastive_loss_grad,
                scalar::contrastive_loss_workspace_len,
            ),
        ] {
            let wl = len(3, 2);
            let m = Metric::Euclidean;
            assert_eq!(
                loss(x, &labels[..2], m, good, &mut ws),
                Err(Error::LengthMismatch {
                    buffer: "labels",
                    expected: 3,
                    actual: 2
                })
            );
            assert_eq!(
                grad(x, &labels, m, good, &mut g[..5], &mut ws),
                Err(Error::LengthMismatch {
                    buffer: "grad",
                    expected: 6,
                    actual: 5
                })
            );
            assert_eq!(
                grad(x, &labels, m, good, &mut g, &mut ws[..wl - 1]),
                Err(Error::WorkspaceTooSmall {
                    required: wl,
                    actual: wl - 1
                })
            );
            assert!(matches!(
                loss(
                    x,
                    &labels,
                    m,
                    ContrastiveParams::new(f32::NAN, 1.0),
                    &mut ws
                ),
                Err(Error::InvalidParameter {
                    name: "pos_margin",
                    ..
                })
            ));
            assert!(matches!(
                grad(
                    x,
                    &labels,
                    m,
                    ContrastiveParams::new(0.0, f32::NEG_INFINITY),
                    &mut g,
                    &mut ws
                ),
                Err(Error::InvalidParameter {
                    name: "neg_margin",
                    ..
                })
            ));
            assert_eq!(
                grad(xb, &labels, m, good, &mut g, &mut ws),
                Err(Error::NonFinite {
                    buffer: "x",
                    row: 1,
                    col: 0,
                })
            );
            // Order: labels before grad before workspace before parameters before data.
            assert_eq!(
                grad(
                    xb,
                    &labels[..1],
                    m,
                    ContrastiveParams::new(f32::NAN, 1.0),
                    &mut g[..1],
                    &mut []
                ),
                Err(Error::LengthMismatch {
                    buffer: "labels",
                    expected: 3,
                    actual: 1
                })
            );
            assert_eq!(
                grad(
                    xb,
                    &labels,
                    m,
                    ContrastiveParams::new(f32::NAN, 1.0),
                    &mut g,
                    &mut []
                ),
                Err(Error::WorkspaceTooSmall {
                    required: wl,
                    actual: 0
                })
            );
        }
        assert!(g.iter().all(|&v| v == 7.0), "a failing call wrote to grad");
        assert_eq!(contrastive_loss_workspace_len(usize::MAX, 1), usize::MAX);
        assert_eq!(contrastive_loss_workspace_len(1, 1), 1);
        assert_eq!(contrastive_loss_workspace_len(4, 9), 4 + 6);
        assert_eq!(scalar::contrastive_loss_workspace_len(4, 9), 36);
        assert_eq!(
            scalar::contrastive_loss_workspace_len(usize::MAX, 2),
            usize::MAX
        );
    }
}

mod quadruplet {
    use super::contrastive::fd_check;
    use super::*;
    use testkit::quadruplet::{margins, tolerances};
    use triplet_kernels::{
        mine_quadruplets, mine_quadruplets_count, mine_quadruplets_workspace_len, quadruplet_loss,
        quadruplet_loss_grad, quadruplet_loss_workspace_len, scalar, Error, Hinge, Quadruplet,
        QuadrupletParams, Reduction,
    };

    const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::MeanNonzero];
    const HINGES: [Hinge; 2] = [Hinge::Relu, Hinge::SoftPlus];

    fn quads() -> impl Strategy<Value = Vec<[u32; 4]>> {
        proptest::collection::vec(proptest::array::uniform4(0u32..1000), 0..40)
    }

    /// Indices reduced modulo `n` into quadruplets.
    fn to_quads(raw: &[[u32; 4]], n: usize) -> Vec<Quadruplet> {
        raw.iter()
            .map(|q| {
                let [a, p, n1, n2] = q.map(|v| v % n as u32);
                Quadruplet::new(a, p, n1, n2)
            })
            .collect()
    }

    fn run(x: Matrix<'_>, quads: &[Quadruplet], metric: Metric, p: QuadrupletParams) {
        let (n, d) = (x.rows(), x.dim());
        let Some((loss_tol, row_tol)) = tolerances(&x, quads, metric, &p) else {
            return;
        };
        let mut ws = vec![
            f32::NAN;
            quadruplet_loss_workspace_len(n, d)
                .max(scalar::quadruplet_loss_workspace_len(n, d))
        ];
        let (mut gf, mut gs) = (vec![f32::NAN; n * d], vec![f32::NAN; n * d]);
        let lf = quadruplet_loss_grad(x, quads, metric, p, &mut gf, &mut ws).unwrap();
        ws.fill(1e30);
        let mut again = vec![-1.0; n * d];
        let lf2 = quadruplet_loss_grad(x, quads, metric, p, &mut again, &mut ws).unwrap();
        assert_eq!((lf.to_bits(), bits(&gf)), (lf2.to_bits(), bits(&again)));
        let lf3 = quadruplet_loss(x, quads, metric, p, &mut ws).unwrap();
        assert_eq!(lf.to_bits(), lf3.to_bits());
        let ls = scalar::quadruplet_loss_grad(x, quads, metric, p, &mut gs, &mut ws).unwrap();
        assert_eq!(
            ls.to_bits(),
            scalar::quadruplet_loss(x, quads, metric, p, &mut ws)
                .unwrap()
                .to_bits()
        );
        assert!(
            (f64::from(lf) - f64::from(ls)).abs() <= loss_tol,
            "{metric:?} {p:?}: loss {lf} vs {ls}, tol {loss_tol}"
        );
        assert_close(&format!("{metric:?} {p:?} grad"), &gf, &gs, |k| {
            row_tol[k / d]
        });
    }

    /// Margins on the scale of the batch's distances.
    fn scale_of(x: &Matrix<'_>, metric: Metric) -> f32 {
        let r0 = x.row(0).unwrap();
        let m = x
            .row_iter()
            .map(|r| dist64(metric, r0, r))
            .fold(0.0, f64::max);
        if m > 0.0 {
            m as f32
        } else {
            1.0
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn matches_scalar(
            (n, d, data, _labels) in batch(1usize..=33, 1usize..=67, 1u32..=2, value()),
            raw in quads(),
            m1 in -0.5f32..1.0,
            m2 in -0.5f32..1.0,
        ) {
            let x = Matrix::new(&data, n, d).unwrap();
            let q = to_quads(&raw, n);
            for metric in METRICS {
                let s = scale_of(&x, metric);
                for hinge in HINGES {
                    for r in REDUCTIONS {
                        let p = QuadrupletParams::new(m1 * s, m2 * s).with_hinge(hinge).with_reduction(r);
                        run(x, &q, metric, p);
                    }
                }
            }
        }

        #[test]
        fn integers_same_decisions(
            (n, d, data, _l) in batch(1usize..=20, 1usize..=12, 1u32..=2, int_value()),
            raw in quads(),
            m1 in -20i32..40,
            m2 in -20i32..40,
        ) {
            let x = Matrix::new(&data, n, d).unwrap();
            let q = to_quads(&raw, n);
            let mut ws = vec![0.0; quadruplet_loss_workspace_len(n, d).max(scalar::quadruplet_loss_workspace_len(n, d))];
            for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
                for r in REDUCTIONS {
                    let p = QuadrupletParams::new(m1 as f32, m2 as f32).with_reduction(r);
                    let (mut gf, mut gs) = (vec![0.0; n * d], vec![0.0; n * d]);
                    let lf = quadruplet_loss_grad(x, &q, metric, p, &mut gf, &mut ws).unwrap();
                    let ls = scalar::quadruplet_loss_grad(x, &q, metric, p, &mut gs, &mut ws).unwrap();
                    prop_assert!((f64::from(lf) - f64::from(ls)).abs() <= 1e-5 * (1.0 + f64::from(ls.abs())));
                    let gmax = gs.iter().fold(1.0_f32, |m, v| m.max(v.abs()));
                    for (a, b) in gf.iter().zip(&gs) {
                        prop_assert!((a - b).abs() <= 1e-5 * gmax, "{a} vs {b}");
                    }
                }
            }
        }

        #[test]
        fn scalar_gradient_matches_finite_differences(
            (n, d, data, _l) in batch(2usize..=7, 1usize..=5, 1u32..=2, small_value()),
            raw in proptest::collection::vec(proptest::array::uniform4(0u32..1000), 1..8),
            m1 in 0.0f32..2.0,
            m2 in 0.0f32..2.0,
        ) {
            prop_assume!(data.chunks(d).all(|r| norm(r) > 0.3));
            let x = Matrix::new(&data, n, d).unwrap();
            let q = to_quads(&raw, n);
            let mut ws = vec![0.0; quadruplet_loss_workspace_len(n, d).max(scalar::quadruplet_loss_workspace_len(n, d))];
            for metric in METRICS {
                for hinge in HINGES {
                    for r in REDUCTIONS {
                        let p = QuadrupletParams::new(m1, m2).with_hinge(hinge).with_reduction(r);
                        let mut g = vec![0.0; n * d];
                        scalar::quadruplet_loss_grad(x, &q, metric, p, &mut g, &mut ws).unwrap();
                        let loss_at = |data: &[f32], ws: &mut [f32]| {
                            let x = Matrix::new(data, n, d).unwrap();
                            f64::from(scalar::quadruplet_loss(x, &q, metric, p, ws).unwrap())
                        };
                        let status = |data: &[f32]| {
                            let x = Matrix::new(data, n, d).unwrap();
                            let mut s = Vec::new();
                            for &qq in &q {
                                let (v1, v2, dd, _, pairs) = margins(&x, qq, metric, &p);
                                if hinge == Hinge::Relu {
                                    s.push(v1);
                                    s.push(v2);
                                }
                                // The Euclidean distance is not smooth at 0.
                                for (dv, [i, j]) in dd.into_iter().zip(pairs) {
                                    if i != j {
                                        s.push(dv);
                                    }
                                }
                            }
                            s
                        };
                        fd_check(&data, &g, 1e-3, &mut ws, loss_at, status);
                    }
                }
            }
        }

        /// Mining on small integers: identical quadruplets from both kernels, and every
        /// quadruplet satisfies the documented rules.
        #[test]
        fn mining_integers_identical(
            (n, d, data, labels) in batch(1usize..=33, 1usize..=9, 1u32..=6, int_value()),
        ) {
            let x = Matrix::new(&data, n, d).unwrap();
            for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
                let (f, s) = mine_both(x, &labels, metric);
                prop_assert_eq!(&f, &s);
                check_rules(x, &labels, metric, &f, 0.0);
            }
        }

        /// Mining on general floats: the same anchors and the same chosen distances.
        #[test]
        fn mining_matches_scalar(
            (n, d, data, labels) in batch(1usize..=33, 1usize..=67, 1u32..=6, value()),
        ) {
            let x = Matrix::new(&data, n, d).unwrap();
            for metric in METRICS {
                let (f, s) = mine_both(x, &labels, metric);
                prop_assert_eq!(f.len(), s.len());
                let r = |i: u32| x.row(i as usize).unwrap();
                for (qf, qs) in f.iter().zip(&s) {
                    prop_assert_eq!(qf.anchor, qs.anchor);
                    let tol = |i: u32, j: u32| 8.0 * (d as f64 + 16.0) * EPS * dist_scale(metric, r(i), r(j)) + 1e-30;
                    let same = |i, j, k, l| (dist64(metric, r(i), r(j)) - dist64(metric, r(k), r(l))).abs() <= tol(i, j) + tol(k, l);
                    prop_assert!(same(qf.anchor, qf.positive, qs.anchor, qs.positive));
                    prop_assert!(same(qf.anchor, qf.negative1, qs.anchor, qs.negative1));
                    if qf.negative1 == qs.negative1 {
                        prop_assert!(same(qf.negative1, qf.negative2, qs.negative1, qs.negative2));
                    }
                }
                check_rules(x, &labels, metric, &f, 8.0 * (d as f64 + 16.0) * EPS);
            }
        }
    }

    fn mine_both(
        x: Matrix<'_>,
        labels: &[u32],
        metric: Metric,
    ) -> (Vec<Quadruplet>, Vec<Quadruplet>) {
        let n = x.rows();
        let count = mine_quadruplets_count(labels).unwrap();
        let sentinel = Quadruplet::new(9, 9, 9, 9);
        let mut ws = vec![f32::NAN; mine_quadruplets_workspace_len(n, x.dim())];
        let mut f = vec![sentinel; count + 2];
        let k = mine_quadruplets(x, labels, metric, &mut f, &mut ws).unwrap();
        assert_eq!(k, count);
        assert_eq!(&f[count..], &[sentinel; 2], "past the count is untouched");
        let mut s = vec![sentinel; count];
        ws.fill(0.0);
        assert_eq!(
            scalar::mine_quadruplets(x, labels, metric, &mut s, &mut ws),
            Ok(count)
        );
        f.truncate(count);
        (f, s)
    }

    /// Brute-force check of the documented selection rules, up to `rel` (times the
    /// distance scale) in the comparisons.
    fn check_rules(x: Matrix<'_>, labels: &[u32], metric: Metric, quads: &[Quadruplet], rel: f64) {
        let n = x.rows();
        let r = |i: usize| x.row(i).unwrap();
        let dd = |i: usize, j: usize| dist64(metric, r(i), r(j));
        let tol = |i: usize, j: usize| rel * dist_scale(metric, r(i), r(j)) + 1e-30;
        let distinct = {
            let mut l = labels.to_vec();
            l.sort_unstable();
            l.dedup();
            l.len()
        };
        let eligible: Vec<usize> = (0..n)
            .filter(|&a| distinct >= 3 && (0..n).any(|j| j != a && labels[j] == labels[a]))
            .collect();
        assert_eq!(
            quads.iter().map(|q| q.anchor as usize).collect::<Vec<_>>(),
            eligible
        );
        for q in quads {
            let [a, p, n1, n2] = q.to_array().map(|v| v as usize);
            assert!(p != a && labels[p] == labels[a]);
            assert!(labels[n1] != labels[a]);
            assert!(labels[n2] != labels[a] && labels[n2] != labels[n1]);
            for j in 0..n {
                if j != a && labels[j] == labels[a] {
                    assert!(
                        dd(a, p) + tol(a, p) + tol(a, j) >= dd(a, j),
                        "farthest positive"
                    );
                    if rel == 0.0 && dd(a, j) == dd(a, p) {
                        assert!(p <= j, "ties go to the smallest index");
                    }
                }
                if labels[j] != labels[a] {
                    assert!(
                        dd(a, n1) <= dd(a, j) + tol(a, n1) + tol(a, j),
                        "nearest negative"
                    );
                    if rel == 0.0 && dd(a, j) == dd(a, n1) {
                        assert!(n1 <= j, "ties go to the smallest index");
                    }
                    if labels[j] != labels[n1] {
                        assert!(
                            dd(n1, n2) <= dd(n1, j) + tol(n1, n2) + tol(n1, j),
                            "nearest third-class row"
                        );
                        if rel == 0.0 && dd(n1, j) == dd(n1, n2) {
                            assert!(n2 <= j, "ties go to the smallest index");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn mining_count_rules() {
        assert_eq!(mine_quadruplets_count(&[]), Ok(0));
        assert_eq!(mine_quadruplets_count(&[1]), Ok(0));
        assert_eq!(mine_quadruplets_count(&[1, 1, 1]), Ok(0));
        assert_eq!(mine_quadruplets_count(&[1, 1, 2, 2]), Ok(0));
        assert_eq!(mine_quadruplets_count(&[1, 2, 3]), Ok(0));
        assert_eq!(mine_quadruplets_count(&[1, 1, 2, 3]), Ok(2));
        assert_eq!(mine_quadruplets_count(&[4, 1, 4, 2, 3, 3, 9]), Ok(4));
        for labels in [
            &[][..],
            &[1, 1, 2, 3],
            &[4, 1, 4, 2, 3, 3, 9],
            &[1, 1, 2, 2],
        ] {
            assert_eq!(
                triplet_kernels::scalar::mine_quadruplets_count(labels),
                mine_quadruplets_count(labels)
            );
        }
        assert_eq!(
            mine_quadruplets_workspace_len(3, 5),
            9 + triplet_kernels::pairwise_distances_workspace_len(3, 5)
        );
        assert_eq!(mine_quadruplets_workspace_len(usize::MAX, 5), usize::MAX);
    }

    #[test]
    fn mining_ties_go_to_the_smallest_index() {
        // Rows 1 and 2 are both positives of 0 at distance 1; rows 3 and 4 both negatives
        // at distance 2; rows 5 and 6 both third-class rows at distance 1 from row 3.
        let data = [
            0.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 2.0, 0.0, -2.0, 1.0, 2.0, -1.0, 2.0,
        ];
        let x = Matrix::new(&data, 7, 2).unwrap();
        let labels = [0, 0, 0, 1, 1, 2, 2];
        let mut out = [Quadruplet::default(); 7];
        let mut ws = vec![0.0; mine_quadruplets_workspace_len(7, 2)];
        for metric in [Metric::SquaredEuclidean, Metric::Euclidean] {
            let k = mine_quadruplets(x, &labels, metric, &mut out, &mut ws).unwrap();
            assert_eq!(k, 7);
            assert_eq!(out[0], Quadruplet::new(0, 1, 3, 5));
            let mut s = [Quadruplet::default(); 7];
            scalar::mine_quadruplets(x, &labels, metric, &mut s, &mut ws).unwrap();
            assert_eq!(out, s);
        }
    }

    #[test]
    fn one_large_case() {
        let (n, d) = (96, 130);
        let mut next = lcg(0x1234_5677);
        let data: Vec<f32> = (0..n * d).map(|_| next()).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 8).collect();
        let x = Matrix::new(&data, n, d).unwrap();
        for metric in METRICS {
            let (q, _) = mine_both(x, &labels, metric);
            assert_eq!(q.len(), n);
            let s = scale_of(&x, metric);
            for r in REDUCTIONS {
                run(
                    x,
                    &q,
                    metric,
                    QuadrupletParams::new(0.3 * s, 0.1 * s).with_reduction(r),
                );
            }
        }
    }

    #[test]
    fn degenerate_inputs() {
        let data = [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0, 2.0];
        let x = Matrix::new(&data, 4, 2).unwrap();
        let mut ws = [f32::NAN; 8];
        let p = QuadrupletParams::new(1.0, 0.5);
        for metric in METRICS {
            // No quadruplets: 0 and a zero gradient, for every reduction.
            for r in REDUCTIONS {
                let mut g = [f32::NAN; 8];
                assert_eq!(
                    quadruplet_loss_grad(x, &[], metric, p.with_reduction(r), &mut g, &mut ws),
                    Ok(0.0)
                );
                assert_eq!(g, [0.0; 8]);
            }
            // Repeated indices, duplicate rows (0 and 2), zero rows (cosine).
            let q = [
                Quadruplet::new(0, 0, 0, 0),
                Quadruplet::new(0, 2, 1, 3),
                Quadruplet::new(1, 1, 0, 2),
            ];
            let (mut gf, mut gs) = ([f32::NAN; 8], [f32::NAN; 8]);
            let lf = quadruplet_loss_grad(x, &q, metric, p, &mut gf, &mut ws).unwrap();
            let ls = scalar::quadruplet_loss_grad(x, &q, metric, p, &mut gs, &mut ws).unwrap();
            assert!(lf.is_finite() && gf.iter().all(|v| v.is_finite()));
            assert!((lf - ls).abs() <= 1e-6 * (1.0 + ls.abs()));
            let gmax = gs.iter().fold(1.0_f32, |m, v| m.max(v.abs()));
            for (a, b) in gf.iter().zip(&gs) {
                assert!((a - b).abs() <= 1e-5 * gmax, "{metric:?}: {gf:?} vs {gs:?}");
            }
        }
        // (a, a, a, a): relu(0 - 0 + m1) + relu(0 - 0 + m2), zero gradient.
        let mut g = [f32::NAN; 8];
        let l = quadruplet_loss_grad(
            x,
            &[Quadruplet::new(3, 3, 3, 3)],
            Metric::Euclidean,
            p,
            &mut g,
            &mut ws,
        )
        .unwrap();
        assert_eq!((l, g), (1.5, [0.0; 8]));
        // Mining: a class with one sample gets no quadruplet, the others do.
        let labels = [0, 0, 1, 2];
        let mut out = [Quadruplet::default(); 4];
        let mut mws = vec![0.0; mine_quadruplets_workspace_len(4, 2)];
        assert_eq!(
            mine_quadruplets(x, &labels, Metric::Euclidean, &mut out, &mut mws),
            Ok(2)
        );
        assert_eq!(
            out[..2],
            [Quadruplet::new(0, 1, 2, 3), Quadruplet::new(1, 0, 2, 3)]
        );
    }

    #[test]
    fn every_error_path() {
        let data = [1.0_f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let x = Matrix::new(&data, 3, 2).unwrap();
        let q = [Quadruplet::new(0, 1, 2, 0)];
        let good = QuadrupletParams::new(1.0, 0.5);
        assert_eq!(quadruplet_loss_workspace_len(3, 2), 3);
        assert_eq!(scalar::quadruplet_loss_workspace_len(3, 2), 6);
        assert_eq!(
            scalar::quadruplet_loss_workspace_len(usize::MAX, 2),
            usize::MAX
        );
        let mut ws = vec![0.0_f32; 6];
        let mut g = [7.0_f32; 6];
        type Loss = fn(
            Matrix<'_>,
            &[Quadruplet],
            Metric,
            QuadrupletParams,
            &mut [f32],
        ) -> Result<f32, Error>;
        type Grad = fn(
            Matrix<'_>,
            &[Quadruplet],
            Metric,
            QuadrupletParams,
            &mut [f32],
            &mut [f32],
        ) -> Result<f32, Error>;
        let bad_x = [1.0_f32, 2.0, 3.0, f32::NAN, 5.0, 6.0];
        let xb = Matrix::new(&bad_x, 3, 2).unwrap();
        let m = Metric::Cosine;
        type Len = fn(usize, usize) -> usize;
        for (loss, grad, len) in [
            (
                quadruplet_loss as Loss,
                quadruplet_loss_grad as Grad,
                quadruplet_loss_workspace_len as Len,
            ),
            (
                scalar::quadruplet_loss,
                scalar::quadruplet_loss_grad,
                scalar::quadruplet_loss_workspace_len,
            ),
        ] {
            let wl = len(3, 2);
            assert_eq!(
                grad(x, &q, m, good, &mut g[..5], &mut ws),
                Err(Error::LengthMismatch {
                    buffer: "grad",
                    expected: 6,
                    actual: 5
                })
            );
            assert_eq!(
                loss(x, &q, m, good, &mut ws[..wl - 1]),
                Err(Error::WorkspaceTooSmall {
                    required: wl,
                    actual: wl - 1
                })
            );
            assert!(matches!(
                loss(x, &q, m, QuadrupletParams::new(f32::INFINITY, 0.5), &mut ws),
                Err(Error::InvalidParameter {
                    name: "margin1",
                    ..
                })
            ));
            assert!(matches!(
                grad(
                    x,
                    &q,
                    m,
                    QuadrupletParams::new(1.0, f32::NAN),
                    &mut g,
                    &mut ws
                ),
                Err(Error::InvalidParameter {
                    name: "margin2",
                    ..
                })
            ));
            let far = [Quadruplet::new(0, 1, 2, 0), Quadruplet::new(0, 1, 3, 7)];
            assert_eq!(
                grad(x, &far, m, good, &mut g, &mut ws),
                Err(Error::IndexOutOfRange {
                    buffer: "quadruplets",
                    position: 6,
                    index: 3,
                    bound: 3
                })
            );
            assert_eq!(
                grad(xb, &q, m, good, &mut g, &mut ws),
                Err(Error::NonFinite {
                    buffer: "x",
                    row: 1,
                    col: 1,
                })
            );
            // Indices are checked before the data.
            assert_eq!(
                loss(xb, &far, m, good, &mut ws),
                Err(Error::IndexOutOfRange {
                    buffer: "quadruplets",
                    position: 6,
                    index: 3,
                    bound: 3
                })
            );
        }
        assert!(g.iter().all(|&v| v == 7.0), "a failing call wrote to grad");

        // The miner.
        type Mine =
            fn(Matrix<'_>, &[u32], Metric, &mut [Quadruplet], &mut [f32]) -> Result<usize, Error>;
        let labels = [0, 0, 1, 2, 2, 1];
        let data6 = [0.0_f32, 1.0, 2.0, 3.0, 4.0, 5.0];
        let x6 = Matrix::new(&data6, 6, 1).unwrap();
        let bad6 = [0.0_f32, 1.0, 2.0, 3.0, f32::NEG_INFINITY, 5.0];
        let xb6 = Matrix::new(&bad6, 6, 1).unwrap();
        let sentinel = Quadruplet::new(1, 2, 3, 4);
        let mut out = [sentinel; 6];
        let mut mws = vec![0.0; mine_quadruplets_workspace_len(6, 1)];
        for mine in [mine_quadruplets as Mine, scalar::mine_quadruplets] {
            assert_eq!(
                mine(x6, &labels[..5], m, &mut out, &mut mws),
                Err(Error::LengthMismatch {
                    buffer: "labels",
                    expected: 6,
                    actual: 5
                })
            );
            let need = mine_quadruplets_workspace_len(6, 1);
            assert_eq!(
                mine(x6, &labels, m, &mut out, &mut mws[..need - 1]),
                Err(Error::WorkspaceTooSmall {
                    required: need,
                    actual: need - 1
                })
            );
            assert_eq!(
                mine(x6, &labels, m, &mut out[..5], &mut mws),
                Err(Error::LengthMismatch {
                    buffer: "out",
                    expected: 6,
                    actual: 5
                })
            );
            assert_eq!(
                mine(xb6, &labels, m, &mut out, &mut mws),
                Err(Error::NonFinite {
                    buffer: "x",
                    row: 4,
                    col: 0,
                })
            );
        }
        assert_eq!(out, [sentinel; 6], "a failing call wrote to out");
    }
}

mod proxy {
    use super::contrastive::fd_check;
    use super::*;
    use testkit::proxy::Proxy;
    use triplet_kernels::{
        proxy_anchor_loss_workspace_len, proxy_nca_loss_workspace_len, scalar, Error,
        ProxyAnchorParams, ProxyNcaParams,
    };

    /// `(rows, classes, dim, x, labels, proxies)`.
    fn proxy_batch(
        rows: impl Strategy<Value = usize>,
        classes: impl Strategy<Value = usize>,
        dim: impl Strategy<Value = usize>,
        v: impl Strategy<Value = f32> + Clone,
    ) -> impl Strategy<Value = (usize, usize, usize, Vec<f32>, Vec<u32>, Vec<f32>)> {
        (rows, classes, dim).prop_flat_map(move |(n, c, d)| {
            (
                Just(n),
                Just(c),
                Just(d),
                proptest::collection::vec(v.clone(), n * d),
                proptest::collection::vec(0..c as u32, n),
                proptest::collection::vec(v.clone(), c * d),
            )
        })
    }

    fn run(which: Proxy, x: Matrix<'_>, labels: &[u32], p: Matrix<'_>) {
        let (n, c, d) = (x.rows(), p.rows(), x.dim());
        let mut ws = vec![f32::NAN; which.ws_len(n, c, d)];
        let (mut gf, mut gpf) = (vec![f32::NAN; n * d], vec![f32::NAN; c * d]);
        let lf = which
            .grad(true, x, labels, p, &mut gf, &mut gpf, &mut ws)
            .unwrap();
        ws.fill(-1e30);
        let (mut g2, mut gp2) = (vec![3.0; n * d], vec![f32::INFINITY; c * d]);
        let lf2 = which
            .grad(true, x, labels, p, &mut g2, &mut gp2, &mut ws)
            .unwrap();
        assert_eq!(
            (lf.to_bits(), bits(&gf), bits(&gpf)),
            (lf2.to_bits(), bits(&g2), bits(&gp2))
        );
        ws.fill(f32::NAN);
        assert_eq!(
            which.loss(true, x, labels, p, &mut ws).unwrap().to_bits(),
            lf.to_bits()
        );
        let (mut gs, mut gps) = (vec![f32::NAN; n * d], vec![f32::NAN; c * d]);
        let ls = which
            .grad(false, x, labels, p, &mut gs, &mut gps, &mut ws)
            .unwrap();
        assert_eq!(
            which.loss(false, x, labels, p, &mut ws).unwrap().to_bits(),
            ls.to_bits()
        );
        assert_proxy_close(
            &format!("{which:?}"),
            (x, p),
            (lf, &gf, &gpf),
            (ls, &gs, &gps),
            which.tolerances(n, c, d),
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn nca_matches_scalar(
            (n, c, d, xd, labels, pd) in proxy_batch(1usize..=33, 1usize..=9, 1usize..=67, value()),
            s in 0.05f32..40.0,
        ) {
            let x = Matrix::new(&xd, n, d).unwrap();
            let p = Matrix::new(&pd, c, d).unwrap();
            run(Proxy::Nca(ProxyNcaParams::new(s)), x, &labels, p);
        }

        #[test]
        fn anchor_matches_scalar(
            (n, c, d, xd, labels, pd) in proxy_batch(1usize..=33, 1usize..=9, 1usize..=67, value()),
            m in -0.5f32..0.5,
            a in 0.5f32..64.0,
        ) {
            let x = Matrix::new(&xd, n, d).unwrap();
            let p = Matrix::new(&pd, c, d).unwrap();
            run(Proxy::Anchor(ProxyAnchorParams::new(m, a)), x, &labels, p);
        }

        /// Both scalar gradients (embeddings and proxies) against central differences.
        #[test]
        fn scalar_gradients_match_finite_differences(
            (n, c, d, xd, labels, pd) in proxy_batch(1usize..=6, 1usize..=4, 1usize..=5, small_value()),
            s in 0.1f32..8.0,
            m in -0.3f32..0.3,
            a in 0.5f32..12.0,
        ) {
            // Keep every row away from the normalisation clamp (norm 0).
            prop_assume!(xd.chunks(d).chain(pd.chunks(d)).all(|r| norm(r) > 0.5));
            for which in [Proxy::Nca(ProxyNcaParams::new(s)), Proxy::Anchor(ProxyAnchorParams::new(m, a))] {
                let mut ws = vec![0.0; which.ws_len(n, c, d)];
                let x = Matrix::new(&xd, n, d).unwrap();
                let p = Matrix::new(&pd, c, d).unwrap();
                let (mut g, mut gp) = (vec![0.0; n * d], vec![0.0; c * d]);
                which.grad(false, x, &labels, p, &mut g, &mut gp, &mut ws).unwrap();
                let none = |_: &[f32]| Vec::new();
                fd_check(&xd, &g, 1e-3, &mut ws, |data, ws| {
                    let x = Matrix::new(data, n, d).unwrap();
                    f64::from(which.loss(false, x, &labels, p, ws).unwrap())
                }, none);
                fd_check(&pd, &gp, 1e-3, &mut ws, |data, ws| {
                    let p = Matrix::new(data, c, d).unwrap();
                    f64::from(which.loss(false, x, &labels, p, ws).unwrap())
                }, none);
            }
        }
    }

    #[test]
    fn one_large_case() {
        let (n, c, d) = (100, 17, 129);
        let mut next = lcg(0x0bad_cafe);
        let xd: Vec<f32> = (0..n * d).map(|_| next()).collect();
        let pd: Vec<f32> = (0..c * d).map(|_| next()).collect();
        // Proxy 16 has no row: it only enters the negative part.
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 16).collect();
        let x = Matrix::new(&xd, n, d).unwrap();
        let p = Matrix::new(&pd, c, d).unwrap();
        for which in [
            Proxy::Nca(ProxyNcaParams::pytorch_metric_learning()),
            Proxy::Nca(ProxyNcaParams::new(32.0)),
            Proxy::Anchor(ProxyAnchorParams::pytorch_metric_learning()),
            Proxy::Anchor(ProxyAnchorParams::new(0.2, 16.0)),
        ] {
            run(which, x, &labels, p);
        }
    }

    /// Scales far beyond where a naive exp overflows: the log-sum-exp keeps the loss
    /// finite and equal to the twin's.
    #[test]
    fn large_scales_stay_finite() {
        let (n, c, d) = (12, 5, 7);
        let mut next = lcg(0x5eed_0001);
        let xd: Vec<f32> = (0..n * d).map(|_| next()).collect();
        let pd: Vec<f32> = (0..c * d).map(|_| next()).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 4).collect();
        let x = Matrix::new(&xd, n, d).unwrap();
        let p = Matrix::new(&pd, c, d).unwrap();
        for which in [
            Proxy::Nca(ProxyNcaParams::new(1e4)),
            Proxy::Nca(ProxyNcaParams::new(1e30)),
            Proxy::Anchor(ProxyAnchorParams::new(0.1, 1e4)),
            Proxy::Anchor(ProxyAnchorParams::new(0.1, 1e30)),
        ] {
            run(which, x, &labels, p);
        }
    }

    /// Proxy-Anchor by hand with a proxy that has no row: its positive term is left out
    /// of the average, its negative term stays in.
    #[test]
    fn anchor_proxy_without_rows() {
        let x = Matrix::new(&[1.0, 0.0, 0.0, 1.0], 2, 2).unwrap();
        let p = Matrix::new(&[1.0, 0.0, 0.0, 2.0, -1.0, -1.0], 3, 2).unwrap();
        let labels = [0, 0];
        let (m, a) = (0.1_f64, 4.0_f64);
        let s = |xi: [f64; 2], pc: [f64; 2]| (xi[0] * pc[0] + xi[1] * pc[1]) / (pc[0].hypot(pc[1]));
        let rows = [[1.0, 0.0], [0.0, 1.0]];
        let prox = [[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]];
        let pos0 = (1.0
            + rows
                .iter()
                .map(|r| (-a * (s(*r, prox[0]) - m)).exp())
                .sum::<f64>())
        .ln();
        let neg = |c: usize| {
            (1.0 + rows
                .iter()
                .map(|r| (a * (s(*r, prox[c]) + m)).exp())
                .sum::<f64>())
            .ln()
        };
        let want = pos0 / 1.0 + (0.0 + neg(1) + neg(2)) / 3.0;
        let mut ws = vec![
            0.0;
            proxy_anchor_loss_workspace_len(2, 3, 2)
                .max(scalar::proxy_anchor_loss_workspace_len(2, 3, 2))
        ];
        for fast in [true, false] {
            let l = Proxy::Anchor(ProxyAnchorParams::new(m as f32, a as f32))
                .loss(fast, x, &labels, p, &mut ws)
                .unwrap();
            assert!((f64::from(l) - want).abs() < 1e-5 * want, "{l} vs {want}");
        }
    }

    /// Proxy-NCA by hand on unit vectors.
    #[test]
    fn nca_by_hand() {
        let x = Matrix::new(&[2.0, 0.0], 1, 2).unwrap();
        let p = Matrix::new(&[1.0, 0.0, 0.0, 3.0, -5.0, 0.0], 3, 2).unwrap();
        let s = 2.0_f64;
        // q = 0, 2, 4.
        let want = -((0.0_f64).exp() / (1.0 + (-2.0 * s).exp() + (-4.0 * s).exp())).ln();
        let mut ws = vec![
            0.0;
            proxy_nca_loss_workspace_len(1, 3, 2)
                .max(scalar::proxy_nca_loss_workspace_len(1, 3, 2))
        ];
        for fast in [true, false] {
            let l = Proxy::Nca(ProxyNcaParams::new(s as f32))
                .loss(fast, x, &[0], p, &mut ws)
                .unwrap();
            assert!((f64::from(l) - want).abs() < 1e-6, "{l} vs {want}");
        }
    }

    #[test]
    fn degenerate_inputs() {
        // A zero row, a zero proxy, a proxy with no row, a class with one row, C = 1.
        let xd = [0.0, 0.0, 1.0, 2.0, -1.0, 0.5];
        let pd = [0.0, 0.0, 1.0, 1.0, 3.0, -2.0];
        let x = Matrix::new(&xd, 3, 2).unwrap();
        for (c, labels) in [(3, [1, 1, 0]), (3, [0, 1, 1]), (1, [0, 0, 0])] {
            let p = Matrix::new(&pd[..2 * c], c, 2).unwrap();
            for which in [
                Proxy::Nca(ProxyNcaParams::default()),
                Proxy::Anchor(ProxyAnchorParams::default()),
            ] {
                let mut ws = vec![f32::NAN; which.ws_len(3, c, 2)];
                let (mut gf, mut gpf) = (vec![f32::NAN; 6], vec![f32::NAN; 2 * c]);
                let (mut gs, mut gps) = (vec![f32::NAN; 6], vec![f32::NAN; 2 * c]);
                let lf = which
                    .grad(true, x, &labels, p, &mut gf, &mut gpf, &mut ws)
                    .unwrap();
                let ls = which
                    .grad(false, x, &labels, p, &mut gs, &mut gps, &mut ws)
                    .unwrap();
                assert!(
                    lf.is_finite() && gf.iter().chain(&gpf).all(|v| v.is_finite()),
                    "{which:?} {labels:?}"
                );
                assert!((lf - ls).abs() <= 1e-5 * (1.0 + ls.abs()));
                // Zero rows and proxies get the clamped derivative (order 1e12): compare
                // relative to the largest element.
                for (f, s) in [(&gf, &gs), (&gpf, &gps)] {
                    let m = s.iter().fold(1e-6_f32, |m, v| m.max(v.abs()));
                    for (a, b) in f.iter().zip(s.iter()) {
                        assert!(
                            (a - b).abs() <= 1e-4 * m,
                            "{which:?} {labels:?}: {f:?} vs {s:?}"
                        );
                    }
                }
            }
        }
        assert_eq!(ProxyNcaParams::default().softmax_scale, 1.0);
        let a = ProxyAnchorParams::default();
        assert_eq!((a.margin, a.alpha), (0.1, 32.0));
    }

    #[test]
    fn every_error_path() {
        let xd = [1.0_f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let x = Matrix::new(&xd, 3, 2).unwrap();
        let pd = [1.0_f32, 0.0, 0.0, 1.0];
        let p = Matrix::new(&pd, 2, 2).unwrap();
        let p3 = Matrix::new(&xd, 2, 3).unwrap();
        let labels = [0, 1, 1];
        let bad_x = [1.0_f32, f32::NAN, 3.0, 4.0, 5.0, 6.0];
        let xb = Matrix::new(&bad_x, 3, 2).unwrap();
        let bad_p = [1.0_f32, 0.0, 0.0, f32::INFINITY];
        let pb = Matrix::new(&bad_p, 2, 2).unwrap();
        assert_eq!(proxy_nca_loss_workspace_len(3, 2, 2), 2 * 4 + 2 * 2 + 2 * 2);
        assert_eq!(
            proxy_anchor_loss_workspace_len(3, 2, 2),
            2 * 4 + 3 * 2 + 2 * 2
        );
        assert_eq!(proxy_nca_loss_workspace_len(1, usize::MAX, 2), usize::MAX);
        assert_eq!(
            proxy_anchor_loss_workspace_len(usize::MAX, 2, 1),
            usize::MAX
        );
        assert_eq!(scalar::proxy_nca_loss_workspace_len(3, 2, 2), (3 + 2) * 2);
        assert_eq!(
            scalar::proxy_anchor_loss_workspace_len(3, 2, 2),
            (3 + 2) * 2
        );
        assert_eq!(
            scalar::proxy_nca_loss_workspace_len(1, usize::MAX, 2),
            usize::MAX
        );
        assert_eq!(
            scalar::proxy_anchor_loss_workspace_len(usize::MAX, 2, 1),
            usize::MAX
        );
        let (mut g, mut gp) = ([7.0_f32; 6], [7.0_f32; 4]);
        for fast in [true, false] {
            for which in [
                Proxy::Nca(ProxyNcaParams::new(1.0)),
                Proxy::Anchor(ProxyAnchorParams::new(0.1, 32.0)),
            ] {
                let wl = which.ws_need(fast, 3, 2, 2);
                let mut ws = vec![0.0_f32; wl];
                assert_eq!(
                    which.loss(fast, x, &labels, p3, &mut ws),
                    Err(Error::DimensionMismatch { left: 2, right: 3 })
                );
                assert_eq!(
                    which.loss(fast, x, &labels[..2], p, &mut ws),
                    Err(Error::LengthMismatch {
                        buffer: "labels",
                        expected: 3,
                        actual: 2
                    })
                );
                assert_eq!(
                    which.grad(fast, x, &labels, p, &mut g[..5], &mut gp, &mut ws),
                    Err(Error::LengthMismatch {
                        buffer: "grad",
                        expected: 6,
                        actual: 5
                    })
                );
                assert_eq!(
                    which.grad(fast, x, &labels, p, &mut g, &mut gp[..3], &mut ws),
                    Err(Error::LengthMismatch {
                        buffer: "grad_proxies",
                        expected: 4,
                        actual: 3
                    })
                );
                assert_eq!(
                    which.grad(fast, x, &labels, p, &mut g, &mut gp, &mut ws[..wl - 1]),
                    Err(Error::WorkspaceTooSmall {
                        required: wl,
                        actual: wl - 1
                    })
                );
                assert_eq!(
                    which.grad(fast, x, &[0, 2, 1], p, &mut g, &mut gp, &mut ws),
                    Err(Error::IndexOutOfRange {
                        buffer: "labels",
                        position: 1,
                        index: 2,
                        bound: 2
                    })
                );
                assert_eq!(
                    which.grad(fast, xb, &labels, pb, &mut g, &mut gp, &mut ws),
                    Err(Error::NonFinite {
                        buffer: "x",
                        row: 0,
                        col: 1,
                    })
                );
                assert_eq!(
                    which.loss(fast, x, &labels, pb, &mut ws),
                    Err(Error::NonFinite {
                        buffer: "proxies",
                        row: 1,
                        col: 1,
                    })
                );
                // Labels are checked before the data.
                assert_eq!(
                    which.loss(fast, xb, &[5, 0, 0], p, &mut ws),
                    Err(Error::IndexOutOfRange {
                        buffer: "labels",
                        position: 0,
                        index: 5,
                        bound: 2
                    })
                );
            }
            let mut ws = vec![0.0_f32; 64];
            for s in [0.0, -1.0, f32::NAN, f32::INFINITY] {
                assert!(matches!(
                    Proxy::Nca(ProxyNcaParams::new(s))
                        .grad(fast, x, &labels, p, &mut g, &mut gp, &mut ws),
                    Err(Error::InvalidParameter {
                        name: "softmax_scale",
                        ..
                    })
                ));
            }
            for a in [0.0, -2.0, f32::NAN, f32::INFINITY] {
                assert!(matches!(
                    Proxy::Anchor(ProxyAnchorParams::new(0.1, a))
                        .loss(fast, x, &labels, p, &mut ws),
                    Err(Error::InvalidParameter { name: "alpha", .. })
                ));
            }
            assert!(matches!(
                Proxy::Anchor(ProxyAnchorParams::new(f32::NAN, 32.0))
                    .grad(fast, x, &labels, p, &mut g, &mut gp, &mut ws),
                Err(Error::InvalidParameter { name: "margin", .. })
            ));
            // Parameters are checked before the labels' range.
            assert!(matches!(
                Proxy::Nca(ProxyNcaParams::new(0.0)).loss(fast, x, &[9, 9, 9], p, &mut ws),
                Err(Error::InvalidParameter {
                    name: "softmax_scale",
                    ..
                })
            ));
        }
        assert!(
            g.iter().chain(&gp).all(|&v| v == 7.0),
            "a failing call wrote a gradient"
        );
    }
}
