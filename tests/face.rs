//! ArcFace and CosFace: fast kernels against their `f64` twins over shapes on both sides
//! of the row block (64) and the register tiles, finite differences of the twin, large
//! scales and class counts, and every error path.
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use testkit::bounds::{assert_proxy_close, face_tolerances, max_target_cos};
use triplet_kernels::{
    arcface_loss, arcface_loss_grad, arcface_loss_workspace_len, cosface_loss, cosface_loss_grad,
    scalar, ArcFaceParams, CosFaceParams, Error, Matrix,
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
enum Head {
    Arc(ArcFaceParams),
    Cos(CosFaceParams),
}

type Out = (f32, Vec<f32>, Vec<f32>);

fn run(head: Head, x: Matrix<'_>, labels: &[u32], w: Matrix<'_>, twin: bool) -> Out {
    let (n, c, d) = (x.rows(), w.rows(), x.dim());
    let len = arcface_loss_workspace_len(n, c, d).max(scalar::arcface_loss_workspace_len(n, c, d));
    let mut ws = vec![f32::NAN; len];
    let mut g = vec![f32::NAN; x.len()];
    let mut gw = vec![f32::NAN; w.len()];
    let loss = match (head, twin) {
        (Head::Arc(p), false) => arcface_loss_grad(x, labels, w, p, &mut g, &mut gw, &mut ws),
        (Head::Arc(p), true) => {
            scalar::arcface_loss_grad(x, labels, w, p, &mut g, &mut gw, &mut ws)
        }
        (Head::Cos(p), false) => cosface_loss_grad(x, labels, w, p, &mut g, &mut gw, &mut ws),
        (Head::Cos(p), true) => {
            scalar::cosface_loss_grad(x, labels, w, p, &mut g, &mut gw, &mut ws)
        }
    }
    .unwrap();
    let mut ws = vec![f32::NAN; len];
    let alone = match head {
        Head::Arc(p) => arcface_loss(x, labels, w, p, &mut ws),
        Head::Cos(p) => cosface_loss(x, labels, w, p, &mut ws),
    }
    .unwrap();
    if !twin {
        assert_eq!(
            alone.to_bits(),
            loss.to_bits(),
            "loss alone and with gradients"
        );
    }
    (loss, g, gw)
}

#[test]
fn fast_matches_the_twin() {
    let shapes = [
        (1, 1, 3),
        (3, 2, 5),
        (17, 40, 16),
        (64, 7, 3),
        (65, 33, 17),
        (130, 120, 40),
        (40, 300, 70),
    ];
    for (seed, &(n, c, d)) in shapes.iter().enumerate() {
        let xd = data(n * d, seed as u64 * 3 + 1);
        let wd = data(c * d, seed as u64 * 3 + 2);
        let labels: Vec<u32> = (0..n as u32)
            .map(|i| (i * 7 + seed as u32) % c as u32)
            .collect();
        let (x, w) = (
            Matrix::new(&xd, n, d).unwrap(),
            Matrix::new(&wd, c, d).unwrap(),
        );
        let cmax = max_target_cos(&xd, &wd, &labels, d);
        for scale in [1.0_f32, 16.0, 64.0] {
            let heads = [
                Head::Cos(CosFaceParams::pytorch_metric_learning().with_scale(scale)),
                Head::Cos(CosFaceParams::new(-0.2, scale)),
                Head::Arc(ArcFaceParams::pytorch_metric_learning().with_scale(scale)),
                Head::Arc(ArcFaceParams::new(75.0, scale)),
            ];
            for head in heads {
                let slope = match head {
                    // f'(c) = cos m + sin m c / sqrt(1 - c^2), at most 1 + 1 / sqrt(1 - c^2).
                    Head::Arc(_) if cmax > 0.99 => continue,
                    Head::Arc(_) => 1.0 + 1.0 / (1.0 - cmax * cmax).sqrt(),
                    Head::Cos(_) => 1.0,
                };
                let fast = run(head, x, &labels, w, false);
                let twin = run(head, x, &labels, w, true);
                assert_proxy_close(
                    &format!("{head:?} n {n} c {c} d {d}"),
                    (x, w),
                    (fast.0, &fast.1, &fast.2),
                    (twin.0, &twin.1, &twin.2),
                    face_tolerances(scale, slope, n, c, d),
                );
            }
        }
    }
}

/// Central differences of the twin's loss (in `f64` through `f32` inputs: steps of a few
/// thousand units in the last place) against its gradient.
#[test]
fn twin_gradients_match_finite_differences() {
    let (n, c, d) = (5, 4, 3);
    let xd = data(n * d, 11);
    let wd = data(c * d, 12);
    let labels = [0_u32, 1, 2, 3, 1];
    for head in [
        Head::Arc(ArcFaceParams::new(20.0, 4.0)),
        Head::Cos(CosFaceParams::new(0.3, 4.0)),
    ] {
        let loss_at = |xv: &[f32], wv: &[f32]| {
            let (x, w) = (
                Matrix::new(xv, n, d).unwrap(),
                Matrix::new(wv, c, d).unwrap(),
            );
            f64::from(run(head, x, &labels, w, true).0)
        };
        let (x, w) = (
            Matrix::new(&xd, n, d).unwrap(),
            Matrix::new(&wd, c, d).unwrap(),
        );
        let (_, g, gw) = run(head, x, &labels, w, true);
        let h = 1e-3_f32;
        for k in 0..xd.len() {
            let (mut up, mut down) = (xd.clone(), xd.clone());
            up[k] += h;
            down[k] -= h;
            let fd = (loss_at(&up, &wd) - loss_at(&down, &wd)) / f64::from(up[k] - down[k]);
            assert!(
                (fd - f64::from(g[k])).abs() < 2e-3,
                "{head:?} x[{k}]: {fd} vs {}",
                g[k]
            );
        }
        for k in 0..wd.len() {
            let (mut up, mut down) = (wd.clone(), wd.clone());
            up[k] += h;
            down[k] -= h;
            let fd = (loss_at(&xd, &up) - loss_at(&xd, &down)) / f64::from(up[k] - down[k]);
            assert!(
                (fd - f64::from(gw[k])).abs() < 2e-3,
                "{head:?} w[{k}]: {fd} vs {}",
                gw[k]
            );
        }
    }
}

#[test]
fn large_scale_and_many_classes_stay_finite() {
    let (n, c, d) = (70, 100_000, 4);
    let xd = data(n * d, 21);
    let wd = data(c * d, 22);
    let labels: Vec<u32> = (0..n as u32).map(|i| i * 1_409 % c as u32).collect();
    let (x, w) = (
        Matrix::new(&xd, n, d).unwrap(),
        Matrix::new(&wd, c, d).unwrap(),
    );
    for head in [
        Head::Arc(ArcFaceParams::pytorch_metric_learning()),
        Head::Cos(CosFaceParams::pytorch_metric_learning()),
    ] {
        let (loss, g, gw) = run(head, x, &labels, w, false);
        assert!(loss.is_finite() && loss > 0.0, "{head:?}: {loss}");
        assert!(g.iter().chain(&gw).all(|v| v.is_finite()), "{head:?}");
    }
}

#[test]
fn errors_write_nothing() {
    let xd = data(6, 1);
    let wd = data(6, 2);
    let (x, w) = (
        Matrix::new(&xd, 3, 2).unwrap(),
        Matrix::new(&wd, 3, 2).unwrap(),
    );
    let mut ws = vec![0.0_f32; arcface_loss_workspace_len(3, 3, 2)];
    let (mut g, mut gw) = ([7.0_f32; 6], [7.0_f32; 6]);
    let ok = ArcFaceParams::pytorch_metric_learning();
    let cases: [(ArcFaceParams, &[u32], Error); 4] = [
        (
            ok.with_margin_degrees(180.0),
            &[0, 1, 2],
            Error::InvalidParameter {
                name: "margin_degrees",
                expected: "finite, in [0, 180)",
            },
        ),
        (
            ok.with_margin_degrees(f32::NAN),
            &[0, 1, 2],
            Error::InvalidParameter {
                name: "margin_degrees",
                expected: "finite, in [0, 180)",
            },
        ),
        (
            ok.with_scale(0.0),
            &[0, 1, 2],
            Error::InvalidParameter {
                name: "scale",
                expected: "finite and > 0",
            },
        ),
        (
            ok,
            &[0, 1, 3],
            Error::IndexOutOfRange {
                buffer: "labels",
                position: 2,
                index: 3,
                bound: 3,
            },
        ),
    ];
    for (p, labels, want) in cases {
        assert_eq!(
            arcface_loss_grad(x, labels, w, p, &mut g, &mut gw, &mut ws),
            Err(want)
        );
        assert_eq!(
            scalar::arcface_loss_grad(x, labels, w, p, &mut g, &mut gw, &mut ws),
            Err(want)
        );
    }
    let bad = CosFaceParams::new(f32::INFINITY, 64.0);
    assert!(matches!(
        cosface_loss_grad(x, &[0, 1, 2], w, bad, &mut g, &mut gw, &mut ws),
        Err(Error::InvalidParameter { name: "margin", .. })
    ));
    assert!(matches!(
        arcface_loss_grad(x, &[0, 1, 2], w, ok, &mut g[..5], &mut gw, &mut ws),
        Err(Error::LengthMismatch { buffer: "grad", .. })
    ));
    assert!(matches!(
        arcface_loss_grad(x, &[0, 1, 2], w, ok, &mut g, &mut gw, &mut ws[..1]),
        Err(Error::WorkspaceTooSmall { .. })
    ));
    let mut nan = xd.clone();
    nan[3] = f32::NAN;
    let xn = Matrix::new(&nan, 3, 2).unwrap();
    assert_eq!(
        cosface_loss(xn, &[0, 1, 2], w, CosFaceParams::default(), &mut ws),
        Err(Error::NonFinite {
            buffer: "x",
            row: 1,
            col: 1
        })
    );
    assert_eq!(g, [7.0; 6]);
    assert_eq!(gw, [7.0; 6]);
}
