//! Crash reproducers found by the fuzz targets (`fuzz/`), minimised and written as plain
//! calls of the public API. The raw inputs live under `fuzz/regressions/<target>/`, named
//! as the tests below. A test marked `#[ignore]` still fails: its reason names the issue.

use triplet_kernels::{
    l2_normalize_backward, mine_quadruplets, mine_quadruplets_count,
    mine_quadruplets_workspace_len, proxy_anchor_loss, proxy_anchor_loss_grad,
    proxy_anchor_loss_workspace_len, proxy_nca_loss, proxy_nca_loss_grad,
    proxy_nca_loss_workspace_len, scalar, Matrix, Metric, ProxyAnchorParams, ProxyNcaParams,
    Quadruplet,
};

/// `variants_diff`, `nca-sum-overflow`: the docs promise a finite Proxy-NCA loss for every
/// finite `softmax_scale` up to `f32::MAX / 4`. Here each row's term is at most `4 s` (the
/// exact mean, `2.1e38`, is representable and the twin returns it) but the fast kernel
/// sums the per-row terms in `f32` before dividing by `n`, and the sum overflows.
#[test]
fn nca_sum_overflow() {
    let x = Matrix::new(&[8.0, 8.0], 2, 1).unwrap();
    let proxies = Matrix::new(&[-5.0, 7.0, 7.0, -3.0, 0.0], 5, 1).unwrap();
    let labels = [4, 0];
    let params = ProxyNcaParams::new(f32::MAX / 4.0);
    let mut ws = vec![
        0.0_f32;
        proxy_nca_loss_workspace_len(2, 5, 1)
            .max(scalar::proxy_nca_loss_workspace_len(2, 5, 1))
    ];
    let twin = scalar::proxy_nca_loss(x, &labels, proxies, params, &mut ws).unwrap();
    assert!(twin.is_finite(), "twin {twin}");
    let fast = proxy_nca_loss(x, &labels, proxies, params, &mut ws).unwrap();
    assert!(fast.is_finite(), "fast {fast}, twin {twin}");
    let (mut g, mut gp) = ([0.0_f32; 2], [0.0_f32; 5]);
    let fast_g = proxy_nca_loss_grad(x, &labels, proxies, params, &mut g, &mut gp, &mut ws);
    assert!(fast_g.unwrap().is_finite());
}

/// `variants_diff`, `anchor-sum-overflow`: the docs promise a finite Proxy-Anchor loss
/// whenever `alpha (1 + |margin|)` is finite (here `6.9e37`). The exact loss is `1.26e38`
/// and the twin returns it, but the fast kernel sums the per-proxy log-sum-exps of each
/// part in `f32` before dividing by the number of proxies, and the negative part (five
/// proxies of about `6.9e37` each) overflows.
///
/// The docs' condition is also too weak for the exact loss itself: both parts can reach
/// `alpha (1 + |margin|)`, so the loss reaches about twice that (three rows on `[1]`, two
/// proxies on `[-1]`, margin 0, `alpha = 0.99 f32::MAX`: the twin returns `inf` as well).
#[test]
fn anchor_sum_overflow() {
    let x = Matrix::new(&[8.0], 1, 1).unwrap();
    let proxies = Matrix::new(&[-6.0, -8.0, 0.0, 0.0, 0.0, 5.0], 6, 1).unwrap();
    let labels = [2];
    let params = ProxyAnchorParams::new(5.316_911_7e36, 12.950_98);
    assert!((params.alpha * (1.0 + params.margin.abs())).is_finite());
    let mut ws = vec![
        0.0_f32;
        proxy_anchor_loss_workspace_len(1, 6, 1)
            .max(scalar::proxy_anchor_loss_workspace_len(1, 6, 1))
    ];
    let twin = scalar::proxy_anchor_loss(x, &labels, proxies, params, &mut ws).unwrap();
    assert!(twin.is_finite(), "twin {twin}");
    let fast = proxy_anchor_loss(x, &labels, proxies, params, &mut ws).unwrap();
    assert!(fast.is_finite(), "fast {fast}, twin {twin}");
    let (mut g, mut gp) = ([0.0_f32; 1], [0.0_f32; 6]);
    let fast_g = proxy_anchor_loss_grad(x, &labels, proxies, params, &mut g, &mut gp, &mut ws);
    assert!(fast_g.unwrap().is_finite());
}

/// The second half of `anchor_sum_overflow`'s note: with `alpha (1 + |margin|)` finite the
/// exact Proxy-Anchor loss can still exceed `f32::MAX` (both parts reach about that), so
/// the documented condition is `2 (alpha (1 + |margin|) + ln(n + 1)) < f32::MAX`. This
/// case lies outside it (the twin is infinite too); at the edge of the condition, with the
/// same geometry, both kernels are finite.
#[test]
fn anchor_finite_condition_in_the_docs() {
    let x = Matrix::new(&[1.0, 1.0, 1.0], 3, 1).unwrap();
    let proxies = Matrix::new(&[1.0, -1.0], 2, 1).unwrap();
    let labels = [1, 1, 1];
    let bound = |p: ProxyAnchorParams| {
        2.0 * (f64::from(p.alpha) * (1.0 + f64::from(p.margin.abs())) + 4.0_f64.ln())
    };
    let mut ws = vec![
        0.0_f32;
        proxy_anchor_loss_workspace_len(3, 2, 1)
            .max(scalar::proxy_anchor_loss_workspace_len(3, 2, 1))
    ];
    let outside = ProxyAnchorParams::new(0.0, f32::MAX * 0.99);
    assert!(bound(outside) > f64::from(f32::MAX));
    let twin = scalar::proxy_anchor_loss(x, &labels, proxies, outside, &mut ws).unwrap();
    assert!(twin.is_infinite(), "the exact loss overflows: twin {twin}");
    let inside = ProxyAnchorParams::new(0.0, f32::MAX * 0.49);
    assert!(bound(inside) < f64::from(f32::MAX));
    let twin = scalar::proxy_anchor_loss(x, &labels, proxies, inside, &mut ws).unwrap();
    let fast = proxy_anchor_loss(x, &labels, proxies, inside, &mut ws).unwrap();
    assert!(
        twin.is_finite() && fast.is_finite(),
        "fast {fast}, twin {twin}"
    );
}

/// `variants_diff`, `quadruplet-near-duplicate`: anchor 7's negatives include exact
/// copies of it (rows 9 and 10, distance 0) and a near copy (row 8, squared distance
/// 4.7e-4). With squared norms around 4.2e4 the Gram form cannot tell 4.7e-4 from 0, and
/// the quadruplet miner, deciding on Gram distances alone, took row 8 as the nearest
/// negative. It now re-checks such near pairs in the direct form, as the triplet miners
/// do, and agrees with the twin.
#[test]
fn quadruplet_near_duplicate() {
    let c = -102.72786_f32;
    let t = -0.030_361_997_f32;
    #[rustfmt::skip]
    let data = [
        0.002_108_208_6, -0.002_022_449_4, -0.002_022_449_4, -0.002_022_449_4,
        -57.412_003, -3.766_676, -0.181_846_35, 0.584_418_06,
        -1.942_634_6, -12.225_884, -630.762_27, 0.434_510_7,
        -184.978_12, -0.202_572_08, 0.027_824_508, -0.031_159_56,
        t, t, t, t,
        t, t, t, t,
        t, -33.822_47, -t, t,
        c, c, c, c,
        c, c, c, -102.706_21,
        c, c, c, c,
        c, c, c, c,
    ];
    let x = Matrix::new(&data, 11, 4).unwrap();
    let labels = [
        22955, 22955, 22955, 20873, 23130, 22955, 22955, 20873, 22955, 22955, 22955,
    ];
    let count = mine_quadruplets_count(&labels).unwrap();
    let mut ws = vec![0.0_f32; mine_quadruplets_workspace_len(11, 4)];
    let (mut f, mut s) = (
        vec![Quadruplet::default(); count],
        vec![Quadruplet::default(); count],
    );
    let metric = Metric::SquaredEuclidean;
    assert_eq!(
        mine_quadruplets(x, &labels, metric, &mut f, &mut ws),
        Ok(count)
    );
    assert_eq!(
        scalar::mine_quadruplets(x, &labels, metric, &mut s, &mut ws),
        Ok(count)
    );
    let anchor7 = |q: &[Quadruplet]| *q.iter().find(|q| q.anchor == 7).unwrap();
    assert_eq!(anchor7(&s).negative1, 9);
    assert_eq!(anchor7(&f), anchor7(&s));
}

/// `variants_diff`, `normalize-backward-underflow`: Proxy-Anchor with `alpha = 2.6e-9` on
/// a 1-d row of length 6.3e16, whose exact gradient is 0 (in one dimension the
/// normalised row cannot move). The backward of the normalisation formed
/// `x (<x, g> / r^3)`, whose factor `1 / r^3` underflows to a subnormal for such a row, and
/// returned 1e-29 instead of a value within its documented bound
/// `(2 d / 8 + 20) 2^-24 |g| / r` (about 2e-32 here).
#[test]
fn normalize_backward_underflow() {
    let x = Matrix::new(&[-6.327_903e16], 1, 1).unwrap();
    for g in [1e-9_f32, -3.3e-9, 1e-6, 1.0] {
        let mut gx = [f32::NAN];
        l2_normalize_backward(x, &[g], &mut gx).unwrap();
        let bound =
            (2.0 / 8.0 + 20.0) * f64::from(f32::EPSILON) / 2.0 * f64::from(g.abs()) / 6.327_903e16;
        assert!(
            f64::from(gx[0]).abs() <= bound,
            "g {g}: {} > {bound}",
            gx[0]
        );
    }
    let x = Matrix::new(&[-6.327_903e16, -0.015_012_487], 2, 1).unwrap();
    let proxies = Matrix::new(&[-0.013_473_676, -6.0, -8.0, 0.0, 0.0], 5, 1).unwrap();
    let labels = [3, 3];
    let params = ProxyAnchorParams::new(5.764_452e-16, 2.577_857_5e-9);
    let mut ws = vec![0.0_f32; proxy_anchor_loss_workspace_len(2, 5, 1)];
    let (mut g, mut gp) = ([f32::NAN; 2], [f32::NAN; 5]);
    proxy_anchor_loss_grad(x, &labels, proxies, params, &mut g, &mut gp, &mut ws).unwrap();
    assert!(g[0].abs() < 1e-31, "grad[0] {}", g[0]);
}

/// `variants_diff`, `normalize-backward-short-row`: Proxy-Anchor with
/// `margin = alpha = f32::MIN_POSITIVE` on one row and two equal 1-d proxies of length
/// `4e-11`, whose exact gradients are 0 (in one dimension the normalised rows cannot
/// move). The backward of the proxies' normalisation formed `<x, g> / r^2`; with
/// `g = -5.9e-39` the product `<x, g>` (`-2.3e-49`) underflowed to 0, the projection
/// vanished and `g / r = -1.5e-28` came out, against the documented bound
/// `(2 d / 8 + 20) 2^-24 |g| / r + (d + 3) (1 + 1 / r) 2^-150` (about `2.5e-34` here). No
/// extreme parameter is needed: a normal `g = 1e-30` on the same row left `3.4e-25`
/// (bound `3e-26`), through the subnormal `<x, g> = 4e-41`.
#[test]
fn normalize_backward_short_row() {
    let r = 3.960_403_5e-11_f32;
    let (row, pd) = ([r], [r, r]);
    let x = Matrix::new(&row, 1, 1).unwrap();
    for g in [-5.9e-39_f32, 1e-30, -1e-25, 1e-20] {
        let mut gx = [f32::NAN];
        l2_normalize_backward(x, &[g], &mut gx).unwrap();
        let (r, g) = (f64::from(r), f64::from(g));
        let bound = (2.0 / 8.0 + 20.0) * f64::from(f32::EPSILON) / 2.0 * g.abs() / r
            + 4.0 * (1.0 + 1.0 / r) * 2.0_f64.powi(-150);
        assert!(
            f64::from(gx[0]).abs() <= bound,
            "g {g}: {} > {bound}",
            gx[0]
        );
    }
    let x = Matrix::new(&[0.012_087_498], 1, 1).unwrap();
    let proxies = Matrix::new(&pd, 2, 1).unwrap();
    let params = ProxyAnchorParams::new(f32::MIN_POSITIVE, f32::MIN_POSITIVE);
    let mut ws = vec![0.0_f32; proxy_anchor_loss_workspace_len(1, 2, 1)];
    let (mut g, mut gp) = ([f32::NAN; 1], [f32::NAN; 2]);
    proxy_anchor_loss_grad(x, &[0], proxies, params, &mut g, &mut gp, &mut ws).unwrap();
    for v in g.iter().chain(&gp) {
        assert!(v.abs() < 1e-30, "grad {g:?}, grad_proxies {gp:?}");
    }
}
