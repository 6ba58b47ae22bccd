//! The reference forms of the batch triplet losses (anchors against a separate candidate
//! set) and the block decomposition: fast kernels against their `f64` twins, the
//! reference form against the in-batch loss, and batches split into 1..8 blocks of
//! anchors against the single call.

use proptest::prelude::*;
use testkit::rows::grad_scale;
use testkit::strategies::{int_value, value};
use testkit::{bits, to64};
use triplet_kernels::{
    combine_batch_losses, mine_triplets_ref, mine_triplets_ref_count,
    mine_triplets_ref_workspace_len, scalar, triplet_batch_loss_grad,
    triplet_batch_loss_grad_workspace_len, triplet_batch_ref_loss, triplet_batch_ref_loss_grad,
    triplet_batch_ref_loss_grad_workspace_len, triplet_batch_ref_loss_workspace_len, BatchLoss,
    BatchParams, Error, GradMode, Hinge, Matrix, Metric, Mining, Reduction, RefGrad, RefSet,
    Triplet, NO_INDEX,
};

const EPS: f64 = 1.0 / 16_777_216.0; // 2^-24

/// One run of the fused kernel: the loss and both gradients (`grad_y` empty when not
/// asked for), the buffers first filled with `fill`.
#[allow(clippy::too_many_arguments)]
fn run(
    x: Matrix<'_>,
    labels: &[u32],
    refs: RefSet<'_>,
    p: BatchParams,
    fast: bool,
    with_y: bool,
    mode: GradMode,
    fill: f32,
) -> Result<(BatchLoss, Vec<f32>, Vec<f32>), Error> {
    let (n, m, d) = (x.rows(), refs.y.rows(), x.dim());
    let mut gx = vec![fill; n * d];
    let mut gy = vec![fill; if with_y { m * d } else { 0 }];
    let ws_len = if fast {
        triplet_batch_ref_loss_grad_workspace_len(n, m, d, p)
    } else {
        scalar::triplet_batch_ref_loss_grad_workspace_len(n, m, d, p)
    };
    let mut ws = vec![f32::NAN; ws_len];
    let mut g = RefGrad::new(&mut gx).with_mode(mode);
    if with_y {
        g = g.with_y(&mut gy);
    }
    let out = if fast {
        triplet_batch_ref_loss_grad(x, labels, refs, p, g, &mut ws)?
    } else {
        scalar::triplet_batch_ref_loss_grad(x, labels, refs, p, g, &mut ws)?
    };
    Ok((out, gx, gy))
}

/// The triplets a kernel selects.
fn mined(
    x: Matrix<'_>,
    labels: &[u32],
    refs: RefSet<'_>,
    p: &BatchParams,
    fast: bool,
) -> Vec<Triplet> {
    let k = mine_triplets_ref_count(labels, refs.labels, refs.self_index, p.mining).unwrap();
    let mut out = vec![Triplet::default(); k];
    let mut ws = vec![f32::NAN; mine_triplets_ref_workspace_len(x.rows(), refs.y.rows(), x.dim())];
    let got = if fast {
        mine_triplets_ref(x, labels, refs, p.metric, p.mining, &mut out, &mut ws)
    } else {
        scalar::mine_triplets_ref(x, labels, refs, p.metric, p.mining, &mut out, &mut ws)
    }
    .unwrap();
    assert_eq!(got, k);
    out
}

/// Per-element gradient tolerances of the fast kernel against the twin, from the selected
/// triplets: each update of a row adds `|w h'(v)|` times the size of its terms
/// ([`grad_scale`]); an element is within `(u + d / 8 + 16) 2^-24` of that sum, `u` the
/// updates to its row (the per-triplet and GEMM bounds of the crate docs, with the
/// GEMM's `sqrt(8 d)` factor for batch-all). Also returns whether a term lies near its
/// hinge kink, where the two may take different slopes.
fn grad_tolerances(
    x: Matrix<'_>,
    refs: RefSet<'_>,
    ts: &[Triplet],
    p: &BatchParams,
    w: f64,
) -> (Vec<f64>, Vec<f64>, bool) {
    let d = x.dim();
    let (mut gx, mut gy) = (vec![0.0; x.len()], vec![0.0; refs.y.len()]);
    let (mut ux, mut uy) = (vec![0.0_f64; x.rows()], vec![0.0_f64; refs.y.rows()]);
    let mut near_kink = false;
    for t in ts {
        let (a, pp, q) = (t.anchor as usize, t.positive as usize, t.negative as usize);
        let (xa, yp, yq) = (
            x.row(a).unwrap(),
            refs.y.row(pp).unwrap(),
            refs.y.row(q).unwrap(),
        );
        let dp = testkit::rows::dist64(p.metric, xa, yp);
        let dq = testkit::rows::dist64(p.metric, xa, yq);
        let v = dp - dq + f64::from(p.margin);
        let scale = testkit::rows::dist_scale(p.metric, xa, yp)
            + testkit::rows::dist_scale(p.metric, xa, yq);
        if p.hinge == Hinge::Relu && v.abs() <= (8.0 * d as f64 + 32.0) * EPS * (scale + 1.0) {
            near_kink = true;
        }
        // The soft margin's slope moves with the error of v (sigmoid' <= 1/4): a
        // relative error of the coefficient, in units of 2^-24 per update.
        let soft = if p.hinge == Hinge::SoftPlus {
            0.25 * (8.0 * d as f64 + 32.0) * (scale + 1.0)
        } else {
            0.0
        };
        let c = w.abs() * (1.0 + soft);
        // Each side's own scale (the cosine terms are not symmetric in the two rows).
        for (j, row) in [(pp, yp), (q, yq)] {
            let (sx, sy) = (grad_scale(p.metric, xa, row), grad_scale(p.metric, row, xa));
            for k in 0..d {
                gx[a * d + k] += c * sx;
                gy[j * d + k] += c * sy;
            }
            ux[a] += 1.0;
            uy[j] += 1.0;
        }
    }
    let factor = if p.mining == Mining::All {
        (8.0 * d as f64).sqrt()
    } else {
        1.0
    };
    let tol = |g: &[f64], u: &[f64]| -> Vec<f64> {
        g.iter()
            .enumerate()
            .map(|(k, &g)| (2.0 * u[k / d] + d as f64 / 8.0 + 16.0) * factor * EPS * g + 1e-30)
            .collect()
    };
    (tol(&gx, &ux), tol(&gy, &uy), near_kink)
}

fn check_close(what: &str, fast: &[f32], slow: &[f32], tol: &[f64]) -> Result<(), TestCaseError> {
    for (k, ((&f, &s), &t)) in fast.iter().zip(slow).zip(tol).enumerate() {
        // Both are rounded to f32 at the end: half an ulp of the twin's value each.
        let t = t + EPS * f64::from(s).abs();
        prop_assert!(
            (f64::from(f) - f64::from(s)).abs() <= t,
            "{}[{}]: fast {} scalar {} tol {:e}",
            what,
            k,
            f,
            s,
            t
        );
    }
    Ok(())
}

fn params() -> impl Strategy<Value = BatchParams> {
    (
        prop_oneof![
            Just(Metric::SquaredEuclidean),
            Just(Metric::Euclidean),
            Just(Metric::Cosine)
        ],
        prop_oneof![
            Just(Mining::All),
            Just(Mining::BatchHard),
            Just(Mining::SemiHard)
        ],
        prop_oneof![Just(Hinge::Relu), Just(Hinge::SoftPlus)],
        prop_oneof![
            Just(Reduction::Sum),
            Just(Reduction::Mean),
            Just(Reduction::MeanNonzero)
        ],
        0u8..=2,
    )
        .prop_map(|(metric, mining, hinge, reduction, margin)| {
            BatchParams::new()
                .with_metric(metric)
                .with_mining(mining)
                .with_hinge(hinge)
                .with_reduction(reduction)
                .with_margin(f32::from(margin) * 0.5)
        })
}

/// Anchors, candidates, their labels (up to four classes) and self indices (some
/// [`NO_INDEX`]) of one case.
#[allow(clippy::type_complexity)]
fn sets(
    v: impl Strategy<Value = f32> + Clone,
) -> impl Strategy<
    Value = (
        usize,
        usize,
        usize,
        Vec<f32>,
        Vec<f32>,
        Vec<u32>,
        Vec<u32>,
        Option<Vec<u32>>,
    ),
> {
    (1usize..=20, 1usize..=40, 1usize..=24, 1u32..=4).prop_flat_map(move |(n, m, d, c)| {
        (
            Just(n),
            Just(m),
            Just(d),
            proptest::collection::vec(v.clone(), n * d),
            proptest::collection::vec(v.clone(), m * d),
            proptest::collection::vec(0..c, n),
            proptest::collection::vec(0..c, m),
            proptest::option::of(proptest::collection::vec(
                prop_oneof![Just(NO_INDEX), 0..m as u32],
                n,
            )),
        )
    })
}

/// Fast against twin: mining, counts, loss and both gradients, in both modes.
#[allow(clippy::too_many_arguments)]
fn ref_vs_scalar(
    n: usize,
    m: usize,
    d: usize,
    xd: &[f32],
    yd: &[f32],
    labels: &[u32],
    y_labels: &[u32],
    own: Option<&[u32]>,
    p: BatchParams,
    exact_decisions: bool,
) -> Result<(), TestCaseError> {
    let x = Matrix::new(xd, n, d).unwrap();
    let y = Matrix::new(yd, m, d).unwrap();
    let mut refs = RefSet::new(y, y_labels);
    if let Some(own) = own {
        refs = refs.with_self_index(own);
    }
    let ov = GradMode::Overwrite;
    let (f, fx, fy) = run(x, labels, refs, p, true, true, ov, f32::NAN).unwrap();
    let (f2, fx2, fy2) = run(x, labels, refs, p, true, true, ov, -3e38).unwrap();
    prop_assert_eq!(f, f2);
    prop_assert_eq!(
        bits(&fx),
        bits(&fx2),
        "garbage in the buffers changed the result"
    );
    prop_assert_eq!(bits(&fy), bits(&fy2));
    // Without grad_y, grad_x is the same.
    let (f3, fx3, _) = run(x, labels, refs, p, true, false, ov, f32::NAN).unwrap();
    prop_assert_eq!(f, f3);
    prop_assert_eq!(bits(&fx), bits(&fx3));
    // The forward entry point.
    let mut ws = vec![f32::NAN; triplet_batch_ref_loss_workspace_len(n, m, d, p)];
    prop_assert_eq!(
        triplet_batch_ref_loss(x, labels, refs, p, &mut ws).unwrap(),
        f
    );
    let (s, sx, sy) = run(x, labels, refs, p, false, true, ov, f32::NAN).unwrap();
    prop_assert!(f.loss.is_finite() && fx.iter().chain(&fy).all(|g| g.is_finite()));
    prop_assert_eq!(f.num_triplets, s.num_triplets);
    prop_assert_eq!(
        f.num_triplets,
        mine_triplets_ref_count(labels, y_labels, own, p.mining).unwrap()
    );
    let ts = mined(x, labels, refs, &p, false);
    let same_choice = mined(x, labels, refs, &p, true) == ts;
    if exact_decisions && p.metric != Metric::Cosine {
        prop_assert!(same_choice, "mining differs on exact distances");
    }
    let w = match p.reduction {
        Reduction::Sum => 1.0,
        Reduction::Mean => 1.0 / s.num_triplets.max(1) as f64,
        _ => 1.0 / s.num_active.max(1) as f64,
    };
    let (tx, ty, near_kink) = grad_tolerances(x, refs, &ts, &p, w);
    // Loss: terms from distances within (8 d + 16) 2^-24 of their scale.
    let scale: f64 = ts
        .iter()
        .map(|t| {
            let xa = x.row(t.anchor as usize).unwrap();
            testkit::rows::dist_scale(p.metric, xa, y.row(t.positive as usize).unwrap())
                + testkit::rows::dist_scale(p.metric, xa, y.row(t.negative as usize).unwrap())
                + f64::from(p.margin.abs())
                + 1.0
        })
        .sum();
    let loss_tol = (8.0 * d as f64 + 32.0) * EPS * scale * w + 4.0 * EPS * f64::from(s.loss).abs();
    // A relu term at its kink may count as active on one side only: the mean over active
    // terms then divides by another count (the docs' exclusion).
    if near_kink && p.reduction == Reduction::MeanNonzero {
        return Ok(());
    }
    if same_choice || p.mining != Mining::SemiHard {
        prop_assert!(
            (f64::from(f.loss) - f64::from(s.loss)).abs() <= loss_tol,
            "loss {} vs {} tol {}",
            f.loss,
            s.loss,
            loss_tol
        );
    }
    if !same_choice || near_kink {
        return Ok(());
    }
    prop_assert_eq!(f.num_active, s.num_active);
    check_close("grad", &fx, &sx, &tx)?;
    check_close("grad_y", &fy, &sy, &ty)?;
    // Accumulate onto zeros: the gradient again, each contribution weighted as it is
    // added (one more rounding per update).
    let acc = GradMode::Accumulate;
    let (fa, fax, fay) = run(x, labels, refs, p, true, true, acc, 0.0).unwrap();
    let (sa, sax, say) = run(x, labels, refs, p, false, true, acc, 0.0).unwrap();
    prop_assert_eq!(fa, f);
    prop_assert_eq!(sa, s);
    prop_assert_eq!(bits(&sax), bits(&sx));
    prop_assert_eq!(bits(&say), bits(&sy));
    let wider = |t: &[f64]| t.iter().map(|&t| 2.0 * t).collect::<Vec<f64>>();
    check_close("accumulated grad", &fax, &sx, &wider(&tx))?;
    check_close("accumulated grad_y", &fay, &sy, &wider(&ty))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn ref_matches_scalar_on_integers(
        (n, m, d, xd, yd, labels, y_labels, own) in sets(int_value()),
        p in params(),
    ) {
        ref_vs_scalar(n, m, d, &xd, &yd, &labels, &y_labels, own.as_deref(), p, true)?;
    }

    #[test]
    fn ref_matches_scalar(
        (n, m, d, xd, yd, labels, y_labels, own) in sets(value()),
        p in params(),
    ) {
        ref_vs_scalar(n, m, d, &xd, &yd, &labels, &y_labels, own.as_deref(), p, false)?;
    }

    /// With `y = x` and every anchor its own row, the reference form is the in-batch
    /// loss: same triplets, same loss bits (the same directly computed terms in the same
    /// order, for batch-hard and semi-hard), and `grad + grad_y` is the in-batch gradient.
    #[test]
    fn self_reference_is_the_in_batch_loss(
        (n, _m, d, xd, _yd, labels, _yl, _own) in sets(int_value()),
        p in params(),
    ) {
        let x = Matrix::new(&xd, n, d).unwrap();
        let own: Vec<u32> = (0..n as u32).collect();
        let refs = RefSet::new(x, &labels).with_self_index(&own);
        let (r, gx, gy) = run(x, &labels, refs, p, false, true, GradMode::Overwrite, f32::NAN).unwrap();
        let mut g = vec![f32::NAN; n * d];
        let mut ws = vec![f32::NAN; scalar::triplet_batch_loss_grad_workspace_len(n, d, p)];
        let b = scalar::triplet_batch_loss_grad(x, &labels, p, &mut g, &mut ws).unwrap();
        prop_assert_eq!((r.num_triplets, r.num_active), (b.num_triplets, b.num_active));
        prop_assert!((f64::from(r.loss) - f64::from(b.loss)).abs() <= 4.0 * EPS * f64::from(b.loss).abs() + 1e-30);
        let mut t = vec![Triplet::default(); b.num_triplets];
        let mut ws = vec![f32::NAN; triplet_kernels::mine_triplets_workspace_len(n, d)];
        let k = scalar::mine_triplets(x, &labels, p.metric, p.mining, &mut t, &mut ws).unwrap();
        prop_assert_eq!(&t[..k], &mined(x, &labels, refs, &p, false)[..]);
        // Two roundings instead of one, and f64 cancellation of the cosine terms: within
        // a few ulp of the largest element. A zero row under cosine is divided by the
        // clamp `1e-12` in the normalisation's backward, so its element is the `f64`
        // rounding of a sum of up to `3 T` terms of size at most 1 (a sum that may
        // cancel to 0: the two forms add them in different orders) times `1e12`.
        let gmax = g.iter().fold(0.0_f64, |m, &v| m.max(f64::from(v).abs()));
        let zero_row_tol = 3.0 * b.num_triplets as f64 * f64::EPSILON * 1e12;
        for (k, ((&a, &c), &want)) in gx.iter().zip(&gy).zip(&g).enumerate() {
            let got = f64::from(a) + f64::from(c);
            let row = &xd[k / d * d..(k / d + 1) * d];
            let amplified = p.metric == Metric::Cosine && row.iter().all(|&v| v == 0.0);
            let tol = 4.0 * EPS * (gmax + f64::from(a).abs() + f64::from(c).abs()) + 1e-30
                + if amplified { zero_row_tol } else { 0.0 };
            prop_assert!((got - f64::from(want)).abs() <= tol, "{} + {} vs {}", a, c, want);
        }
        // The fast kernels agree with each other the same way.
        let (fr, fgx, fgy) = run(x, &labels, refs, p, true, true, GradMode::Overwrite, f32::NAN).unwrap();
        let mut fg = vec![f32::NAN; n * d];
        let mut ws = vec![f32::NAN; triplet_batch_loss_grad_workspace_len(n, d, p)];
        let fb = triplet_batch_loss_grad(x, &labels, p, &mut fg, &mut ws).unwrap();
        prop_assert_eq!(fr.num_triplets, fb.num_triplets);
        if p.mining != Mining::All && p.metric == Metric::SquaredEuclidean {
            prop_assert_eq!(fr.loss.to_bits(), fb.loss.to_bits());
        }
        let _ = (fgx, fgy);
    }
}

// ---------------------------------------------------------------------------------------
// Blocks of anchors.

/// Splits the anchors of one batch into `blocks` contiguous blocks, each computed with
/// [`Reduction::Sum`] into shared buffers ([`GradMode::Accumulate`]); combines them and
/// scales the gradients by the combined weight. Returns the combined loss and gradients.
fn blocked(
    x: Matrix<'_>,
    labels: &[u32],
    y: Matrix<'_>,
    y_labels: &[u32],
    own: Option<&[u32]>,
    p: BatchParams,
    blocks: usize,
) -> (BatchLoss, Vec<f32>, Vec<f32>) {
    let (n, d) = (x.rows(), x.dim());
    let mut gx = vec![0.0_f32; x.len()];
    let mut gy = vec![0.0_f32; y.len()];
    let sum = p.with_reduction(Reduction::Sum);
    let mut parts = Vec::new();
    let mut ws = vec![f32::NAN; triplet_batch_ref_loss_grad_workspace_len(n, y.rows(), d, sum)];
    for b in 0..blocks {
        let (r0, r1) = (b * n / blocks, (b + 1) * n / blocks);
        if r0 == r1 {
            continue;
        }
        let xb = Matrix::new(&x.as_slice()[r0 * d..r1 * d], r1 - r0, d).unwrap();
        let mut refs = RefSet::new(y, y_labels);
        if let Some(own) = own {
            refs = refs.with_self_index(&own[r0..r1]);
        }
        let g = RefGrad::new(&mut gx[r0 * d..r1 * d])
            .with_y(&mut gy)
            .with_mode(GradMode::Accumulate);
        parts
            .push(triplet_batch_ref_loss_grad(xb, &labels[r0..r1], refs, sum, g, &mut ws).unwrap());
    }
    let (total, w) = combine_batch_losses(&parts, p.reduction);
    for g in gx.iter_mut().chain(gy.iter_mut()) {
        *g *= w;
    }
    (total, gx, gy)
}

/// A P x K batch (`classes` classes of `k` rows) of integer-valued rows, with a memory
/// of `mem` more rows in front: `y = concat(memory, x)`, `self_index[a] = mem + a`.
#[allow(clippy::type_complexity)]
fn xbm_case(
    classes: u32,
    k: usize,
    mem: usize,
    d: usize,
    seed: u64,
) -> (Vec<f32>, Vec<u32>, Vec<f32>, Vec<u32>, Vec<u32>) {
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((s >> 33) % 17) as f32 - 8.0
    };
    let n = classes as usize * k;
    let labels: Vec<u32> = (0..n).map(|i| (i / k) as u32 * 3 + 1).collect();
    let x: Vec<f32> = (0..n * d).map(|_| next()).collect();
    let mut y: Vec<f32> = (0..mem * d).map(|_| next()).collect();
    y.extend_from_slice(&x);
    let mut y_labels: Vec<u32> = (0..mem)
        .map(|j| (j % classes as usize) as u32 * 3 + 1)
        .collect();
    y_labels.extend_from_slice(&labels);
    let own = (0..n).map(|a| (mem + a) as u32).collect();
    (x, labels, y, y_labels, own)
}

/// Integer rows, squared Euclidean, relu, integer margin: every distance, term, sum and
/// gradient contribution is an exact integer, so every split reproduces the single call
/// bit for bit, `grad_y` included, whatever the order of additions.
#[test]
fn blocks_add_up_exactly_on_integers() {
    for mining in [Mining::All, Mining::BatchHard, Mining::SemiHard] {
        for reduction in [Reduction::Sum, Reduction::Mean, Reduction::MeanNonzero] {
            let (xd, labels, yd, y_labels, own) = xbm_case(5, 6, 37, 12, 7);
            let n = labels.len();
            let x = Matrix::new(&xd, n, 12).unwrap();
            let y = Matrix::new(&yd, y_labels.len(), 12).unwrap();
            let p = BatchParams::new()
                .with_metric(Metric::SquaredEuclidean)
                .with_mining(mining)
                .with_margin(40.0)
                .with_reduction(reduction);
            let refs = RefSet::new(y, &y_labels).with_self_index(&own);
            let (whole, wx, wy) = run(
                x,
                &labels,
                refs,
                p,
                true,
                true,
                GradMode::Overwrite,
                f32::NAN,
            )
            .unwrap();
            assert!(whole.num_active > 0);
            for blocks in 1..=8 {
                let (b, bx, by) = blocked(x, &labels, y, &y_labels, Some(&own), p, blocks);
                assert_eq!(b, whole, "{mining:?} {reduction:?} {blocks} blocks");
                assert_eq!(
                    bits(&bx),
                    bits(&wx),
                    "{mining:?} {reduction:?} {blocks} blocks: grad"
                );
                assert_eq!(
                    bits(&by),
                    bits(&wy),
                    "{mining:?} {reduction:?} {blocks} blocks: grad_y"
                );
            }
        }
    }
}

/// General rows, every metric and mining: the counts add up exactly; the loss within the
/// `f64` reassociation of its sum; `grad` bit for bit for batch-hard and semi-hard
/// (a row of `grad` holds its own anchor's triplets only, added in the same order, and a
/// reduction's weight applied as the same one multiplication); `grad_y`, whose rows gather
/// every block's contributions in another order, within the per-update rounding.
#[test]
fn blocks_add_up_within_the_bound() {
    let (n, mem, d) = (48, 150, 24);
    let mut s = 12_345_u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let xd: Vec<f32> = (0..n * d).map(|_| next()).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % 6) as u32).collect();
    let mut yd: Vec<f32> = (0..mem * d).map(|_| next()).collect();
    yd.extend_from_slice(&xd);
    let mut y_labels: Vec<u32> = (0..mem).map(|j| (j % 6) as u32).collect();
    y_labels.extend_from_slice(&labels);
    let own: Vec<u32> = (0..n).map(|a| (mem + a) as u32).collect();
    let x = Matrix::new(&xd, n, d).unwrap();
    let y = Matrix::new(&yd, mem + n, d).unwrap();
    for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
        for mining in [Mining::All, Mining::BatchHard, Mining::SemiHard] {
            for (hinge, reduction) in [
                (Hinge::Relu, Reduction::MeanNonzero),
                (Hinge::SoftPlus, Reduction::Mean),
                (Hinge::Relu, Reduction::Sum),
            ] {
                let p = BatchParams::new()
                    .with_metric(metric)
                    .with_mining(mining)
                    .with_hinge(hinge)
                    .with_margin(0.3)
                    .with_reduction(reduction);
                let refs = RefSet::new(y, &y_labels).with_self_index(&own);
                let (whole, wx, wy) = run(
                    x,
                    &labels,
                    refs,
                    p,
                    true,
                    true,
                    GradMode::Overwrite,
                    f32::NAN,
                )
                .unwrap();
                let gmax = wx.iter().chain(&wy).fold(0.0_f32, |m, g| m.max(g.abs()));
                for blocks in 1..=8 {
                    let what =
                        format!("{metric:?} {mining:?} {hinge:?} {reduction:?} {blocks} blocks");
                    let (b, bx, by) = blocked(x, &labels, y, &y_labels, Some(&own), p, blocks);
                    assert_eq!(
                        (b.num_triplets, b.num_active),
                        (whole.num_triplets, whole.num_active),
                        "{what}"
                    );
                    let rel = (f64::from(b.loss) - f64::from(whole.loss)).abs();
                    assert!(
                        rel <= 2.0 * EPS * f64::from(whole.loss).abs(),
                        "{what}: loss {} vs {}",
                        b.loss,
                        whole.loss
                    );
                    if mining != Mining::All {
                        assert_eq!(bits(&bx), bits(&wx), "{what}: grad");
                    }
                    let tol = f64::from(gmax) * (n as f64 * 4.0 + d as f64) * EPS * 8.0 + 1e-30;
                    for (k, (&u, &v)) in bx.iter().zip(&wx).chain(by.iter().zip(&wy)).enumerate() {
                        assert!(
                            (f64::from(u) - f64::from(v)).abs() <= tol,
                            "{what}: element {k}: {u} vs {v}"
                        );
                    }
                }
            }
        }
    }
}

/// Large enough for several anchor blocks of the kernel (128 rows each) and for the
/// GEMM's column panels: the fast kernel against the twin on integer rows.
#[test]
fn several_kernel_blocks_match_the_twin() {
    let (xd, labels, yd, y_labels, own) = xbm_case(30, 10, 200, 20, 99);
    let n = labels.len();
    let x = Matrix::new(&xd, n, 20).unwrap();
    let y = Matrix::new(&yd, y_labels.len(), 20).unwrap();
    let refs = RefSet::new(y, &y_labels).with_self_index(&own);
    for mining in [Mining::All, Mining::BatchHard, Mining::SemiHard] {
        let p = BatchParams::new()
            .with_metric(Metric::SquaredEuclidean)
            .with_mining(mining)
            .with_margin(30.0)
            .with_reduction(Reduction::Sum);
        let (f, fx, fy) = run(
            x,
            &labels,
            refs,
            p,
            true,
            true,
            GradMode::Overwrite,
            f32::NAN,
        )
        .unwrap();
        let (s, sx, sy) = run(
            x,
            &labels,
            refs,
            p,
            false,
            true,
            GradMode::Overwrite,
            f32::NAN,
        )
        .unwrap();
        assert_eq!(f, s, "{mining:?}");
        assert_eq!(bits(&fx), bits(&sx), "{mining:?}: grad");
        assert_eq!(bits(&fy), bits(&sy), "{mining:?}: grad_y");
        assert_eq!(
            mined(x, &labels, refs, &p, true),
            mined(x, &labels, refs, &p, false)
        );
    }
    let _ = to64(&xd);
}

/// Every documented error, fast and twin alike, before any output is written.
#[test]
fn errors() {
    let xd = [0.0_f32, 1.0, 2.0, 3.0];
    let x = Matrix::new(&xd, 2, 2).unwrap();
    let y = Matrix::new(&xd, 2, 2).unwrap();
    let y3 = Matrix::new(&[0.0_f32; 3], 1, 3).unwrap();
    let p = BatchParams::new();
    let big = vec![0.0_f32; 1 << 12];
    let try_both = |x: Matrix<'_>, labels: &[u32], refs: RefSet<'_>, p: BatchParams| {
        let mut out = Vec::new();
        for fast in [true, false] {
            let mut gx = vec![7.0_f32; x.len()];
            let mut ws = big.clone();
            let g = RefGrad::new(&mut gx);
            let r = if fast {
                triplet_batch_ref_loss_grad(x, labels, refs, p, g, &mut ws)
            } else {
                scalar::triplet_batch_ref_loss_grad(x, labels, refs, p, g, &mut ws)
            };
            assert!(gx.iter().all(|&g| g == 7.0) || r.is_ok());
            out.push(r.err());
        }
        assert_eq!(out[0], out[1]);
        out[0]
    };
    let refs = RefSet::new(y, &[0, 1]);
    assert!(try_both(x, &[0, 1], refs, p).is_none());
    assert!(matches!(
        try_both(x, &[0], refs, p),
        Some(Error::LengthMismatch {
            buffer: "labels",
            ..
        })
    ));
    assert!(matches!(
        try_both(x, &[0, 1], RefSet::new(y3, &[0]), p),
        Some(Error::DimensionMismatch { left: 2, right: 3 })
    ));
    assert!(matches!(
        try_both(x, &[0, 1], RefSet::new(y, &[0]), p),
        Some(Error::LengthMismatch {
            buffer: "y_labels",
            ..
        })
    ));
    assert!(matches!(
        try_both(x, &[0, 1], refs.with_self_index(&[0]), p),
        Some(Error::LengthMismatch {
            buffer: "self_index",
            ..
        })
    ));
    assert!(matches!(
        try_both(x, &[0, 1], refs.with_self_index(&[NO_INDEX, 2]), p),
        Some(Error::IndexOutOfRange {
            buffer: "self_index",
            position: 1,
            index: 2,
            bound: 2
        })
    ));
    assert!(matches!(
        try_both(x, &[0, 1], refs, p.with_margin(f32::NAN)),
        Some(Error::InvalidParameter { name: "margin", .. })
    ));
    assert!(matches!(
        try_both(x, &[0, 1], refs, p.with_normalize(true)),
        Some(Error::InvalidParameter {
            name: "normalize",
            ..
        })
    ));
    let nan = [0.0_f32, 1.0, f32::NAN, 3.0];
    let yn = Matrix::new(&nan, 2, 2).unwrap();
    assert!(matches!(
        try_both(x, &[0, 1], RefSet::new(yn, &[0, 1]), p),
        Some(Error::NonFinite {
            buffer: "y",
            row: 1,
            col: 0
        })
    ));
    assert!(matches!(
        try_both(yn, &[0, 1], refs, p),
        Some(Error::NonFinite {
            buffer: "x",
            row: 1,
            col: 0
        })
    ));
    // Gradient lengths, then the workspace.
    let mut gx = vec![0.0_f32; 3];
    let e = triplet_batch_ref_loss_grad(
        x,
        &[0, 1],
        refs,
        p,
        RefGrad::new(&mut gx),
        &mut vec![0.0; 1 << 12],
    );
    assert!(matches!(
        e,
        Err(Error::LengthMismatch { buffer: "grad", .. })
    ));
    let (mut gx, mut gy) = (vec![0.0_f32; 4], vec![0.0_f32; 5]);
    let e = triplet_batch_ref_loss_grad(
        x,
        &[0, 1],
        refs,
        p,
        RefGrad::new(&mut gx).with_y(&mut gy),
        &mut vec![0.0; 1 << 12],
    );
    assert!(matches!(
        e,
        Err(Error::LengthMismatch {
            buffer: "grad_y",
            ..
        })
    ));
    let need = triplet_batch_ref_loss_workspace_len(2, 2, 2, p);
    let e = triplet_batch_ref_loss(x, &[0, 1], refs, p, &mut vec![0.0; need - 1]);
    assert_eq!(
        e,
        Err(Error::WorkspaceTooSmall {
            required: need,
            actual: need - 1
        })
    );
    // The miner's output length.
    let mut out = [Triplet::default(); 1];
    let mut ws = vec![0.0_f32; mine_triplets_ref_workspace_len(2, 2, 2)];
    let e = mine_triplets_ref(
        x,
        &[0, 0],
        RefSet::new(y, &[0, 1]),
        Metric::Euclidean,
        Mining::All,
        &mut out[..0],
        &mut ws,
    );
    assert!(matches!(
        e,
        Err(Error::LengthMismatch {
            buffer: "out",
            expected: 2,
            actual: 0
        })
    ));
}

/// Anchors without a positive or a negative in `y`, a self index pointing at the only
/// positive, duplicate rows and zero rows: nothing panics, everything is finite.
#[test]
fn degenerate_sets() {
    let xd = [0.0_f32, 0.0, 1.0, 1.0, 1.0, 1.0];
    let x = Matrix::new(&xd, 3, 2).unwrap();
    for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
        for mining in [Mining::All, Mining::BatchHard, Mining::SemiHard] {
            for (y_labels, own) in [
                ([5, 5, 5], None),
                ([0, 1, 1], Some([0, 1, NO_INDEX])),
                ([0, 0, 1], Some([1, 0, 2])),
            ] {
                let p = BatchParams::new().with_metric(metric).with_mining(mining);
                let mut refs = RefSet::new(x, &y_labels);
                let o;
                if let Some(v) = own {
                    o = v;
                    refs = refs.with_self_index(&o);
                }
                for fast in [true, false] {
                    let (b, gx, gy) = run(
                        x,
                        &[0, 1, 0],
                        refs,
                        p,
                        fast,
                        true,
                        GradMode::Overwrite,
                        f32::NAN,
                    )
                    .unwrap();
                    assert!(b.loss.is_finite() && gx.iter().chain(&gy).all(|g| g.is_finite()));
                }
            }
        }
    }
}
