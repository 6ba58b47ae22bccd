//! Differential target: the triplet losses (`triplet_margin_loss(_grad)` over explicit
//! triplets, `triplet_batch_loss(_grad)` with online mining) against their scalar twins,
//! over every parameter (metric, margin, swap, eps, hinge, reduction, mining,
//! normalisation) on bounded structured inputs.
//!
//! - Always: no panic; fast and twin return the same `Ok`/`Err`; an `Err` is one of the
//!   documented ones for the arguments given (bad margin or eps, index out of range,
//!   non-finite data at its first position, unnormalised data past `|x_ik| sqrt(dim) <=
//!   2^52` at its first largest element) and leaves every output untouched; the
//!   forward-only call agrees bit for bit with the one that also writes the gradient;
//!   garbage in outputs and workspace does not change any result; triplet counts are
//!   those of `mine_triplets_count`.
//! - Every accepted batch (the data range and the margin limit exist for this) has a
//!   finite loss and gradient.
//! - Accepted data with margins far from `f32`'s overflow (normalised batches: any finite
//!   data): the loss is finite with a finite gradient and both are within the documented
//!   bounds of the twin's (the tests' tolerances, built from the sums of absolute terms),
//!   skipping the configurations the docs exclude: relu margin values within rounding of
//!   the kink (for `MeanNonzero` and for gradients), swap decisions within rounding of a
//!   tie, semi-hard batches whose mining differs near a tie, norms within rounding of the
//!   normalisation clamp and distances in `f32`'s underflow range (for gradients;
//!   explicit triplets without the `eps` shift only exclude Euclidean distances below
//!   `2^-100`, which the kernels recompute from the scaled difference).

#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use testkit::runs::{batch_run, margin_run};
use testkit::triplet_def::{
    as_triplet, bounds, dist_scale_underflow, dv_bound_with, eval_triplet, eval_weight, idx3,
    mined, normalized_dv_extra, through_normalization, Allow, Eval,
};
use triplet_kernels::{
    combine_batch_losses, l2_normalize, mine_triplets_count, mine_triplets_ref_count, scalar,
    triplet_batch_ref_loss, triplet_batch_ref_loss_grad, triplet_batch_ref_loss_grad_workspace_len,
    triplet_batch_ref_loss_workspace_len, BatchLoss, BatchParams, Error, GradMode, Hinge, Matrix,
    Metric, Mining, Reduction, RefGrad, RefSet, Triplet, TripletParams, NO_INDEX,
};

// ---------------------------------------------------------------------------------------
// The f64 definition, on f64 rows: the tests' (testkit), with the underflow allowance.

/// The fuzzed data reach `f32`'s underflow range: every distance's scale carries the
/// underflow allowance.
const UNDERFLOW: Allow = Allow {
    dv_extra: 0.0,
    all: false,
    underflow: true,
};

fn reduce(evals: &[Eval], h: Hinge, r: Reduction) -> (f64, f64) {
    let terms: Vec<f64> = evals.iter().map(|e| hinge64(h, e.v)).collect();
    let w = eval_weight(evals, h, r);
    (
        terms.iter().sum::<f64>() * w,
        terms.iter().sum::<f64>().abs() * w,
    )
}

/// The documented range: every row's squared norm below `f32::MAX / 8` (distances and
/// norms do not overflow; accepted unnormalised data always are, and normalised rows are
/// units), and the exact loss far from `f32`'s overflow.
fn in_range(xd: &[f32], d: usize, terms: usize, margin: f32, eps: f32, normalized: bool) -> bool {
    let max_sq = if normalized {
        1.0
    } else {
        xd.chunks(d).map(sq_norm).fold(0.0, f64::max)
    };
    let shift = f64::from(eps).abs() * (d as f64).sqrt();
    let term = 4.0 * max_sq + shift * shift + f64::from(margin).abs() + 4.0;
    (normalized || rows_in_range(xd, d)) && (terms as f64 + 1.0) * term < 1e36
}

// ---------------------------------------------------------------------------------------
// Explicit triplets.

/// The errors the explicit-triplet loss may return for these arguments (empty: `Ok`).
fn margin_errors(x: &Matrix<'_>, ts: &[Triplet], p: &TripletParams) -> Vec<Error> {
    let mut errs = Vec::new();
    if !p.margin.is_finite() {
        errs.push(invalid("margin", DOMAIN_FINITE));
    }
    if p.eps.is_nan() || p.eps.abs() > 1.0 || (p.metric == Metric::Cosine && p.eps != 0.0) {
        errs.push(invalid("eps", DOMAIN_EPS));
    }
    let n = x.rows();
    if let Some((pos, index)) = ts
        .iter()
        .flat_map(|t| [t.anchor, t.positive, t.negative])
        .enumerate()
        .find(|&(_, i)| i as usize >= n)
    {
        errs.push(Error::IndexOutOfRange {
            buffer: "triplets",
            position: pos,
            index: index as usize,
            bound: n,
        });
    }
    errs.extend(data_error(x.as_slice(), x.dim(), true));
    errs
}

fn margin_case(g: &mut Gen<'_>, regime: Regime, x: Matrix<'_>, xd: &[f32]) {
    let (n, d) = (x.rows(), x.dim());
    let k = g.range(0, 40);
    let ts: Vec<Triplet> = (0..k)
        .map(|_| {
            let mut idx = [0_u32; 3];
            for v in &mut idx {
                *v = if g.byte() < 3 {
                    g.u32()
                } else {
                    g.range(0, n - 1) as u32
                };
            }
            Triplet::new(idx[0], idx[1], idx[2])
        })
        .collect();
    let metric = g.metric();
    let eps = match g.byte() % 5 {
        0 | 1 => 0.0,
        2 => 1e-6,
        3 => g.param(regime, -1e-3, 1e-3),
        // Up to the limit |eps| <= 1.
        _ => g.param(regime, -1.0, 1.0),
    };
    let p = TripletParams::new()
        .with_metric(metric)
        .with_margin(g.param(regime, -1.0, 3.0))
        .with_swap(g.bool())
        .with_eps(if metric == Metric::Cosine && g.byte() > 8 {
            0.0
        } else {
            eps
        })
        .with_hinge(g.hinge())
        .with_reduction(g.reduction());
    let garbage = g.garbage();
    if dump() {
        eprintln!("triplet_margin: n {n} d {d} {p:?}\nx {xd:?}\ntriplets {ts:?}");
    }
    let errs = margin_errors(&x, &ts, &p);
    let f = margin_run(x, &ts, p, true, garbage);
    let s = margin_run(x, &ts, p, false, garbage);
    match (&f, &s) {
        (Err(ef), Err(es)) => {
            assert_eq!(ef, es, "fast and twin refuse differently");
            assert!(errs.contains(ef), "{ef:?} not among {errs:?}");
            return;
        }
        (Ok(_), Ok(_)) => assert!(errs.is_empty(), "Ok despite {errs:?}"),
        _ => panic!("fast {:?} vs twin {:?}", f.as_ref().err(), s.as_ref().err()),
    }
    let (f, s) = (f.unwrap(), s.unwrap());
    // Garbage in the buffers does not matter.
    let f2 = margin_run(x, &ts, p, true, -garbage).unwrap();
    assert_eq!(
        f.loss.to_bits(),
        f2.loss.to_bits(),
        "garbage changed the loss"
    );
    assert_eq!(
        bits(&f.grad),
        bits(&f2.grad),
        "garbage changed the gradient"
    );

    // The documented range: rows and margins whose distances and terms stay far from
    // f32's overflow.
    if !in_range(xd, d, ts.len(), p.margin, p.eps, false) {
        return;
    }
    let x64 = to64(xd);
    let evals: Vec<Eval> = ts
        .iter()
        .map(|&t| eval_triplet(&x64, d, idx3(t), &p))
        .collect();
    let b = bounds(&x64, n, d, &evals, &p, UNDERFLOW);
    assert!(
        f.loss.is_finite() && f.grad.iter().all(|v| v.is_finite()),
        "non-finite loss {} or gradient",
        f.loss
    );
    if b.near_kink && p.reduction == Reduction::MeanNonzero || b.near_swap {
        return;
    }
    let (want, _) = reduce(&evals, p.hinge, p.reduction);
    assert!(
        (f64::from(s.loss) - want).abs() <= 4.0 * EPS * want.abs() + b.loss * 1e-6 + 1e-30,
        "twin {} vs definition {want}",
        s.loss
    );
    assert!(
        (f64::from(f.loss) - f64::from(s.loss)).abs() <= b.loss,
        "loss {} vs {} tol {}",
        f.loss,
        s.loss,
        b.loss
    );
    for ((tf, tsv), e) in f.terms.iter().zip(&s.terms).zip(&evals) {
        let dv = dv_bound_with(
            &x64,
            d,
            e,
            p.metric,
            f64::from(p.eps),
            p.margin,
            dist_scale_underflow,
        );
        assert!(
            (f64::from(*tf) - f64::from(*tsv)).abs()
                <= dv + 8.0 * EPS * f64::from(tsv.abs()) + 1e-30,
            "term {tf} vs {tsv} tol {dv}"
        );
    }
    // Without the shift, tiny Euclidean distances are recomputed from the scaled
    // difference, and their gradients keep full accuracy down to `2^-100`.
    let tiny = if p.eps == 0.0 { b.very_tiny } else { b.tiny };
    if b.near_kink || tiny || (p.metric == Metric::Cosine && near_clamp(xd, d, 1e-4)) {
        return;
    }
    assert_close("explicit grad", &f.grad, &s.grad, |k| b.grad[k / d]);
}

// ---------------------------------------------------------------------------------------
// Batch losses.

fn batch_case(g: &mut Gen<'_>, regime: Regime, x: Matrix<'_>, xd: &[f32]) {
    let (n, d) = (x.rows(), x.dim());
    let classes = g.range(1, 6);
    let labels = g.labels(n, classes);
    let p = BatchParams::new()
        .with_metric(g.metric())
        .with_mining(g.mining())
        .with_margin(g.param(regime, -0.5, 2.0))
        .with_hinge(g.hinge())
        .with_reduction(g.reduction())
        .with_normalize(g.bool());
    let garbage = g.garbage();
    if dump() {
        eprintln!("triplet_batch: n {n} d {d} {p:?}\nx {xd:?}\nlabels {labels:?}");
    }
    let mut errs = Vec::new();
    if p.margin.is_nan() || p.margin.abs() > MARGIN_MAX {
        errs.push(invalid("margin", DOMAIN_BATCH_MARGIN));
    }
    errs.extend(data_error(xd, d, !p.normalize));
    let f = batch_run(x, &labels, p, true, garbage);
    let s = batch_run(x, &labels, p, false, garbage);
    let ((f, fg), (s, sg)) = match (f, s) {
        (Err(ef), Err(es)) => {
            assert_eq!(ef, es, "fast and twin refuse differently");
            assert!(errs.contains(&ef), "{ef:?} not among {errs:?}");
            return;
        }
        (Ok(f), Ok(s)) => {
            assert!(errs.is_empty(), "Ok despite {errs:?}");
            (f, s)
        }
        (f, s) => panic!("fast {:?} vs twin {:?}", f.err(), s.err()),
    };
    let count = mine_triplets_count(&labels, p.mining).unwrap();
    assert_eq!(f.num_triplets, count);
    assert_eq!(s.num_triplets, count);
    assert!(f.num_active <= count && s.num_active <= count);
    let (f2, fg2) = batch_run(x, &labels, p, true, -garbage).unwrap();
    assert_eq!(
        (f.loss.to_bits(), f.num_triplets, f.num_active),
        (f2.loss.to_bits(), f2.num_triplets, f2.num_active),
        "garbage changed the result"
    );
    assert_eq!(bits(&fg), bits(&fg2), "garbage changed the gradient");
    // The data range and the margin limit exist so that every accepted batch has a
    // finite loss and gradient.
    assert!(
        f.loss.is_finite() && fg.iter().all(|v| v.is_finite()),
        "non-finite loss {} or gradient",
        f.loss
    );
    assert!(s.loss.is_finite() && sg.iter().all(|v| v.is_finite()));

    if !in_range(xd, d, count, p.margin, 0.0, p.normalize) {
        return;
    }
    // The rows each kernel mines on: the fast one's and the twin's normalisation.
    let (mut yf, mut ys) = (xd.to_vec(), xd.to_vec());
    if p.normalize {
        l2_normalize(x, &mut yf).unwrap();
        scalar::l2_normalize(x, &mut ys).unwrap();
    }
    let (yfm, ysm) = (
        Matrix::new(&yf, n, d).unwrap(),
        Matrix::new(&ys, n, d).unwrap(),
    );
    let ts = mined(ysm, &labels, p.metric, p.mining, false);
    let same_choice = mined(yfm, &labels, p.metric, p.mining, true) == ts;
    let y = to64(&ys);
    let tp = as_triplet(&p);
    let evals: Vec<Eval> = ts
        .iter()
        .map(|&t| eval_triplet(&y, d, idx3(t), &tp))
        .collect();
    let w = eval_weight(&evals, p.hinge, p.reduction);
    let dv_extra = if p.normalize {
        normalized_dv_extra(d)
    } else {
        0.0
    };
    let b = bounds(
        &y,
        n,
        d,
        &evals,
        &tp,
        Allow {
            dv_extra,
            ..UNDERFLOW
        },
    );
    let (want, want_abs) = reduce(&evals, p.hinge, p.reduction);
    assert!(
        (f64::from(s.loss) - want).abs() <= 4.0 * EPS * want_abs + 1e-30,
        "twin {} vs definition {want} on its own triplets",
        s.loss
    );
    if b.near_kink && p.reduction == Reduction::MeanNonzero {
        return;
    }
    if same_choice || p.mining != Mining::SemiHard {
        assert!(
            (f64::from(f.loss) - f64::from(s.loss)).abs() <= b.loss,
            "loss {} vs {} tol {}",
            f.loss,
            s.loss,
            b.loss
        );
    }
    if !b.near_kink && (same_choice || p.mining == Mining::All) {
        assert_eq!(f.num_active, s.num_active, "active terms");
    }
    if !same_choice || b.near_kink || b.tiny {
        return;
    }
    if (p.normalize || p.metric == Metric::Cosine) && near_clamp(xd, d, 1e-4) {
        return;
    }
    // Normalised rows from data past the distance bounds' range: the gradients scale as
    // 1 / |x| and may underflow, which the relative tolerances below do not allow for.
    if !rows_in_range(xd, d) {
        return;
    }
    let mut tol = b.grad.clone();
    if p.normalize {
        let x64 = to64(xd);
        through_normalization(&mut tol, &x64, d, &evals, w, &p, &sg);
    }
    assert_close("batch grad", &fg, &sg, |k| tol[k / d]);
}

// ---------------------------------------------------------------------------------------
// Reference forms (anchors against a separate candidate set).

/// One run of the reference-form loss with both gradients, the buffers first filled with
/// `garbage`.
fn ref_run(
    x: Matrix<'_>,
    labels: &[u32],
    refs: RefSet<'_>,
    p: BatchParams,
    fast: bool,
    mode: GradMode,
    garbage: f32,
) -> Result<(BatchLoss, Vec<f32>, Vec<f32>), Error> {
    let (n, m, d) = (x.rows(), refs.y.rows(), x.dim());
    let (mut gx, mut gy) = (vec![garbage; n * d], vec![garbage; m * d]);
    let len = if fast {
        triplet_batch_ref_loss_grad_workspace_len(n, m, d, p)
    } else {
        scalar::triplet_batch_ref_loss_grad_workspace_len(n, m, d, p)
    };
    let mut ws = vec![garbage; len];
    let g = RefGrad::new(&mut gx).with_y(&mut gy).with_mode(mode);
    let out = if fast {
        triplet_batch_ref_loss_grad(x, labels, refs, p, g, &mut ws)?
    } else {
        scalar::triplet_batch_ref_loss_grad(x, labels, refs, p, g, &mut ws)?
    };
    Ok((out, gx, gy))
}

/// Anchors `x` against candidates drawn from the same generator (some of them copies of
/// the anchors, as a cross-batch memory holds them): fast and twin agree on `Ok`/`Err`
/// and on the counts; accepted inputs give finite results, unchanged by garbage in the
/// buffers; the forward call agrees with the fused one; splitting the anchors in two
/// blocks ([`combine_batch_losses`]) gives the whole call's counts.
fn ref_case(g: &mut Gen<'_>, regime: Regime, x: Matrix<'_>, xd: &[f32]) {
    let (n, d) = (x.rows(), x.dim());
    let extra = g.range(0, 24);
    let mut yd = g.values(regime, extra * d);
    yd.extend_from_slice(xd);
    let m = extra + n;
    let y = Matrix::new(&yd, m, d).unwrap();
    let classes = g.range(1, 5);
    let labels = g.labels(n, classes);
    let mut y_labels = g.labels(extra, classes);
    y_labels.extend_from_slice(&labels);
    let own: Vec<u32> = (0..n)
        .map(|a| {
            if g.byte() < 8 {
                NO_INDEX
            } else {
                (extra + a) as u32
            }
        })
        .collect();
    let mut refs = RefSet::new(y, &y_labels);
    if g.bool() {
        refs = refs.with_self_index(&own);
    }
    let p = BatchParams::new()
        .with_metric(g.metric())
        .with_mining(g.mining())
        .with_margin(g.param(regime, -0.5, 2.0))
        .with_hinge(g.hinge())
        .with_reduction(g.reduction());
    let mode = if g.bool() {
        GradMode::Overwrite
    } else {
        GradMode::Accumulate
    };
    let garbage = g.garbage();
    if dump() {
        eprintln!("triplet_batch_ref: n {n} m {m} d {d} {p:?} {mode:?}\nx {xd:?}\ny {yd:?}");
    }
    let f = ref_run(x, &labels, refs, p, true, mode, garbage);
    let s = ref_run(x, &labels, refs, p, false, mode, garbage);
    let ((f, fx, fy), (s, sx, sy)) = match (f, s) {
        (Err(ef), Err(es)) => {
            assert_eq!(ef, es, "fast and twin refuse differently");
            return;
        }
        (Ok(f), Ok(s)) => (f, s),
        (f, s) => panic!("fast {:?} vs twin {:?}", f.err(), s.err()),
    };
    let count = mine_triplets_ref_count(&labels, &y_labels, refs.self_index, p.mining).unwrap();
    assert_eq!((f.num_triplets, s.num_triplets), (count, count));
    assert!(f.num_active <= count && s.num_active <= count);
    if mode == GradMode::Overwrite {
        let (f2, fx2, fy2) = ref_run(x, &labels, refs, p, true, mode, -garbage).unwrap();
        assert_eq!(f, f2, "garbage changed the result");
        assert_eq!(bits(&fx), bits(&fx2), "garbage changed the gradient");
        assert_eq!(bits(&fy), bits(&fy2), "garbage changed grad_y");
        assert!(f.loss.is_finite() && fx.iter().chain(&fy).all(|v| v.is_finite()));
        assert!(s.loss.is_finite() && sx.iter().chain(&sy).all(|v| v.is_finite()));
    }
    let mut ws = vec![garbage; triplet_batch_ref_loss_workspace_len(n, m, d, p)];
    assert_eq!(
        triplet_batch_ref_loss(x, &labels, refs, p, &mut ws).unwrap(),
        f
    );
    // Two blocks of anchors count what the whole call counts.
    let h = n / 2;
    if h > 0 {
        let mut parts = Vec::new();
        for (r0, r1) in [(0, h), (h, n)] {
            let xb = Matrix::new(&xd[r0 * d..r1 * d], r1 - r0, d).unwrap();
            let mut rb = RefSet::new(y, &y_labels);
            if let Some(o) = refs.self_index {
                rb = rb.with_self_index(&o[r0..r1]);
            }
            let sum = p.with_reduction(Reduction::Sum);
            let mut ws = vec![garbage; triplet_batch_ref_loss_workspace_len(r1 - r0, m, d, sum)];
            parts.push(triplet_batch_ref_loss(xb, &labels[r0..r1], rb, sum, &mut ws).unwrap());
        }
        let (total, _) = combine_batch_losses(&parts, p.reduction);
        assert_eq!(total.num_triplets, f.num_triplets);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut g = Gen::new(data);
    let regime = g.regime();
    let n = g.size(1, 33);
    let d = g.size(1, 67);
    let xd = g.values(regime, n * d);
    let x = Matrix::new(&xd, n, d).unwrap();
    match g.byte() % 3 {
        0 => margin_case(&mut g, regime, x, &xd),
        1 => batch_case(&mut g, regime, x, &xd),
        _ => ref_case(&mut g, regime, x, &xd),
    }
});
