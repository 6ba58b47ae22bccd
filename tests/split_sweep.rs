//! The batch-hard sweep split over workers: parts merged in any order equal the whole
//! sweep bit for bit, the loss over the merged choices equals the whole batch-hard loss bit
//! for bit, the fast kernels against their `f64` twins, and the errors.

use proptest::prelude::*;
use testkit::strategies::{int_value, value};
use triplet_kernels::{
    hardest_pairs, hardest_pairs_part, hardest_pairs_part_workspace_len,
    hardest_pairs_workspace_len, merge_hardest_pairs, scalar, triplet_batch_loss,
    triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_batch_loss_workspace_len, triplet_hardest_pairs_loss, triplet_hardest_pairs_loss_grad,
    triplet_hardest_pairs_loss_workspace_len, BatchParams, Error, HardestPair, Hinge, Matrix,
    Metric, Mining, Reduction, SweepPart, NO_INDEX,
};

const EPS: f64 = 1.0 / 16_777_216.0; // 2^-24

fn bits(v: &[HardestPair]) -> Vec<u32> {
    bytemuck::cast_slice(v).to_vec()
}

/// Part `i` of `parts`, fast or twin.
fn part(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    i: usize,
    parts: usize,
    fast: bool,
) -> Vec<HardestPair> {
    let mut out = vec![
        HardestPair {
            positive: 7,
            ..HardestPair::NONE
        };
        x.rows()
    ];
    let mut ws = vec![f32::NAN; hardest_pairs_part_workspace_len(x.rows(), x.dim())];
    let p = SweepPart::new(i, parts);
    if fast {
        hardest_pairs_part(x, labels, metric, p, &mut out, &mut ws).unwrap();
    } else {
        scalar::hardest_pairs_part(x, labels, metric, p, &mut out, &mut ws).unwrap();
    }
    out
}

/// The parts folded left to right, right to left, and as a tree of pairs.
fn merges(parts: &[Vec<HardestPair>]) -> [Vec<HardestPair>; 3] {
    let n = parts[0].len();
    let mut fwd = vec![HardestPair::NONE; n];
    for p in parts {
        merge_hardest_pairs(&mut fwd, p).unwrap();
    }
    let mut rev = vec![HardestPair::NONE; n];
    for p in parts.iter().rev() {
        merge_hardest_pairs(&mut rev, p).unwrap();
    }
    let mut level: Vec<Vec<HardestPair>> = parts.to_vec();
    while level.len() > 1 {
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            let mut a = pair[0].clone();
            if let Some(b) = pair.get(1) {
                merge_hardest_pairs(&mut a, b).unwrap();
            }
            next.push(a);
        }
        level = next;
    }
    [fwd, rev, level.pop().unwrap()]
}

fn metric() -> impl Strategy<Value = Metric> {
    prop_oneof![
        Just(Metric::SquaredEuclidean),
        Just(Metric::Euclidean),
        Just(Metric::Cosine)
    ]
}

fn params() -> impl Strategy<Value = BatchParams> {
    (
        metric(),
        prop_oneof![Just(Hinge::Relu), Just(Hinge::SoftPlus)],
        prop_oneof![
            Just(Reduction::Sum),
            Just(Reduction::Mean),
            Just(Reduction::MeanNonzero)
        ],
        0u8..=3,
    )
        .prop_map(|(metric, hinge, reduction, margin)| {
            BatchParams::new()
                .with_metric(metric)
                .with_mining(Mining::BatchHard)
                .with_hinge(hinge)
                .with_reduction(reduction)
                .with_margin(f32::from(margin) * 0.25)
        })
}

/// A batch of `n` rows (1 to 3 tiles of 256, with remainders) of dimension `d`, labels
/// from `c` classes.
fn batch(
    v: impl Strategy<Value = f32> + Clone,
) -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<u32>)> {
    (1usize..=600, 1usize..=5, 1u32..=9).prop_flat_map(move |(n, d, c)| {
        (
            Just(n),
            Just(d),
            proptest::collection::vec(v.clone(), n * d),
            proptest::collection::vec(0..c, n),
        )
    })
}

/// Every split of the sweep, merged in every order, is the whole sweep; the whole sweep's
/// indices are `hardest_pairs`'s; the loss over the merge is `triplet_batch_loss(_grad)`'s.
fn split_is_whole(
    n: usize,
    d: usize,
    xd: &[f32],
    labels: &[u32],
    parts: usize,
    p: BatchParams,
) -> Result<(), TestCaseError> {
    let x = Matrix::new(xd, n, d).unwrap();
    let whole = part(x, labels, p.metric, 0, 1, true);
    let (mut pos, mut neg) = (vec![0; n], vec![0; n]);
    let mut ws = vec![0.0; hardest_pairs_workspace_len(n, d)];
    hardest_pairs(x, labels, p.metric, &mut pos, &mut neg, &mut ws).unwrap();
    let wp: Vec<u32> = whole.iter().map(|c| c.positive).collect();
    let wn: Vec<u32> = whole.iter().map(|c| c.negative).collect();
    prop_assert_eq!(&wp, &pos);
    prop_assert_eq!(&wn, &neg);
    let ps: Vec<Vec<HardestPair>> = (0..parts)
        .map(|i| part(x, labels, p.metric, i, parts, true))
        .collect();
    for m in merges(&ps) {
        prop_assert_eq!(bits(&m), bits(&whole));
    }
    // The loss over the merged choices is the whole batch-hard loss, bit for bit.
    let mut ws1 = vec![f32::NAN; triplet_hardest_pairs_loss_workspace_len(n, d)];
    let mut ws2 = vec![f32::NAN; triplet_batch_loss_grad_workspace_len(n, d, p)];
    let (mut g1, mut g2) = (vec![f32::NAN; n * d], vec![f32::NAN; n * d]);
    let split = triplet_hardest_pairs_loss_grad(x, &whole, p, &mut g1, &mut ws1).unwrap();
    let one = triplet_batch_loss_grad(x, labels, p, &mut g2, &mut ws2).unwrap();
    prop_assert_eq!(split, one);
    prop_assert_eq!(testkit::bits(&g1), testkit::bits(&g2));
    let mut ws3 = vec![f32::NAN; triplet_batch_loss_workspace_len(n, d, p)];
    let fwd = triplet_hardest_pairs_loss(x, &whole, p, &mut ws1).unwrap();
    prop_assert_eq!(fwd, triplet_batch_loss(x, labels, p, &mut ws3).unwrap());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn parts_merge_to_the_whole_sweep(
        (n, d, xd, labels) in batch(value()),
        parts in 1usize..=7,
        p in params(),
    ) {
        split_is_whole(n, d, &xd, &labels, parts, p)?;
    }

    #[test]
    fn parts_merge_to_the_whole_sweep_on_integers(
        (n, d, xd, labels) in batch(int_value()),
        parts in 1usize..=7,
        p in params(),
    ) {
        split_is_whole(n, d, &xd, &labels, parts, p)?;
    }

    /// On integer data under squared Euclidean every distance is exact: each part's
    /// choices and distances equal the twin's.
    #[test]
    fn parts_match_the_twin_on_integers(
        (n, d, xd, labels) in batch(int_value()),
        parts in 1usize..=5,
    ) {
        let x = Matrix::new(&xd, n, d).unwrap();
        for i in 0..parts {
            let fast = part(x, &labels, Metric::SquaredEuclidean, i, parts, true);
            let slow = part(x, &labels, Metric::SquaredEuclidean, i, parts, false);
            prop_assert_eq!(bits(&fast), bits(&slow), "part {} of {}", i, parts);
        }
    }

    /// Elsewhere the chosen distances agree with the twin's to the mining bound.
    #[test]
    fn parts_match_the_twin(
        (n, d, xd, labels) in batch(value()),
        parts in 1usize..=5,
        metric in metric(),
    ) {
        let x = Matrix::new(&xd, n, d).unwrap();
        for i in 0..parts {
            let fast = part(x, &labels, metric, i, parts, true);
            let slow = part(x, &labels, metric, i, parts, false);
            for (a, (f, s)) in fast.iter().zip(&slow).enumerate() {
                // A row's candidates in this part exist for both or for neither.
                prop_assert_eq!(f.positive == NO_INDEX, s.positive == NO_INDEX);
                prop_assert_eq!(f.negative == NO_INDEX, s.negative == NO_INDEX);
                let xa = x.row(a).unwrap();
                for (fi, fv, si, sv) in [
                    (f.positive, f.pos_dist, s.positive, s.pos_dist),
                    (f.negative, f.neg_dist, s.negative, s.neg_dist),
                ] {
                    if fi == NO_INDEX {
                        continue;
                    }
                    let scale = testkit::rows::dist_scale(metric, xa, x.row(fi as usize).unwrap())
                        .max(testkit::rows::dist_scale(metric, xa, x.row(si as usize).unwrap()));
                    let tol = (8.0 * d as f64 + 24.0) * EPS * (scale + 1e-30)
                        + testkit::rows::underflow_allowance(metric, d);
                    prop_assert!(
                        (f64::from(fv) - f64::from(sv)).abs() <= tol,
                        "row {}: fast {} ({}) twin {} ({}) tol {:e}", a, fi, fv, si, sv, tol
                    );
                }
            }
        }
    }

    /// The loss over given choices against its twin (relu, squared Euclidean, integer
    /// data: every distance and term exact, the reduction weight rounded once).
    #[test]
    fn pairs_loss_matches_the_twin_on_integers(
        (n, d, xd, labels) in batch(int_value()),
        red in prop_oneof![Just(Reduction::Sum), Just(Reduction::Mean), Just(Reduction::MeanNonzero)],
    ) {
        let x = Matrix::new(&xd, n, d).unwrap();
        let p = BatchParams::new()
            .with_metric(Metric::SquaredEuclidean)
            .with_margin(1.0)
            .with_reduction(red);
        let pairs = part(x, &labels, p.metric, 0, 1, true);
        let mut ws = vec![f32::NAN; scalar::triplet_hardest_pairs_loss_grad_workspace_len(n, d)];
        let (mut gf, mut gs) = (vec![f32::NAN; n * d], vec![f32::NAN; n * d]);
        let f = triplet_hardest_pairs_loss_grad(x, &pairs, p, &mut gf, &mut ws).unwrap();
        let s = scalar::triplet_hardest_pairs_loss_grad(x, &pairs, p, &mut gs, &mut ws).unwrap();
        prop_assert_eq!((f.num_triplets, f.num_active, f.sum), (s.num_triplets, s.num_active, s.sum));
        prop_assert!((f64::from(f.loss) - f64::from(s.loss)).abs() <= 2.0 * EPS * f64::from(s.loss).abs());
        // Each element within a few roundings of the sum of its updates' magnitudes
        // (the twin rounds w into every update, the kernel scales the exact sum once).
        let w = f64::from(f.loss) / f.sum.max(1e-300);
        let mut mag = vec![0.0_f64; n * d];
        for (a, c) in pairs.iter().enumerate() {
            if c.positive == NO_INDEX || c.negative == NO_INDEX {
                continue;
            }
            for j in [c.positive as usize, c.negative as usize] {
                for k in 0..d {
                    let u = 2.0 * (f64::from(xd[a * d + k]) - f64::from(xd[j * d + k])).abs();
                    mag[a * d + k] += u;
                    mag[j * d + k] += u;
                }
            }
        }
        testkit::assert_close("grad", &gf, &gs, |k| 4.0 * EPS * w.abs().max(1.0) * mag[k]);
        let fl = triplet_hardest_pairs_loss(x, &pairs, p, &mut ws).unwrap();
        let sl = scalar::triplet_hardest_pairs_loss(x, &pairs, p, &mut ws).unwrap();
        prop_assert_eq!(fl, f);
        prop_assert_eq!(sl, s);
    }
}

/// Merging is associative and commutative with `NONE` as neutral element, ties to the
/// smaller index and `NO_INDEX` never winning.
#[test]
fn merge_rules() {
    let c = |p: u32, pd: f32, q: u32, qd: f32| HardestPair {
        positive: p,
        negative: q,
        pos_dist: pd,
        neg_dist: qd,
    };
    let vals = [
        HardestPair::NONE,
        c(3, 2.0, NO_INDEX, f32::INFINITY),
        c(1, 2.0, 5, 1.0),
        c(9, 4.0, 2, 1.0),
        c(NO_INDEX, f32::NEG_INFINITY, 0, 3.0),
        c(0, 0.0, 8, 0.5),
    ];
    let merged = |a: HardestPair, b: HardestPair| {
        let mut x = [a];
        merge_hardest_pairs(&mut x, &[b]).unwrap();
        x[0]
    };
    for &a in &vals {
        assert_eq!(merged(a, HardestPair::NONE), a);
        assert_eq!(merged(HardestPair::NONE, a), a);
        for &b in &vals {
            assert_eq!(merged(a, b), merged(b, a));
            for &d in &vals {
                assert_eq!(merged(merged(a, b), d), merged(a, merged(b, d)));
            }
        }
    }
    assert_eq!(merged(vals[1], vals[2]), c(1, 2.0, 5, 1.0));
    assert_eq!(merged(vals[2], vals[3]), c(9, 4.0, 2, 1.0));
    assert_eq!(merged(vals[4], vals[5]), c(0, 0.0, 8, 0.5));
}

/// More parts than tiles: the extra parts see nothing, and the merge is still the whole.
#[test]
fn empty_parts() {
    let xd: Vec<f32> = (0..30).map(|i| (i * 7 % 11) as f32).collect();
    let labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 3];
    let x = Matrix::new(&xd, 10, 3).unwrap();
    let ps: Vec<Vec<HardestPair>> = (0..4)
        .map(|i| part(x, &labels, Metric::Euclidean, i, 4, true))
        .collect();
    let busy = ps
        .iter()
        .filter(|p| p.iter().any(|c| *c != HardestPair::NONE))
        .count();
    assert_eq!(busy, 1);
    let whole = part(x, &labels, Metric::Euclidean, 0, 1, true);
    for m in merges(&ps) {
        assert_eq!(bits(&m), bits(&whole));
    }
    // The tile of 10 rows: its cost's middle falls in part 2 of 4.
    assert!(ps[2].iter().any(|c| *c != HardestPair::NONE));
}

#[test]
fn errors() {
    let xd = [0.0_f32, 1.0, 2.0, 3.0];
    let x = Matrix::new(&xd, 4, 1).unwrap();
    let labels = [0, 0, 1, 1];
    let mut out = [HardestPair::NONE; 4];
    let mut ws = vec![0.0_f32; hardest_pairs_part_workspace_len(4, 1)];
    let m = Metric::Euclidean;
    for fast in [true, false] {
        let call = |labels: &[u32], p: SweepPart, out: &mut [HardestPair], ws: &mut [f32]| {
            if fast {
                hardest_pairs_part(x, labels, m, p, out, ws)
            } else {
                scalar::hardest_pairs_part(x, labels, m, p, out, ws)
            }
        };
        let whole = SweepPart::WHOLE;
        assert!(matches!(
            call(&labels[..3], whole, &mut out, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "labels",
                ..
            })
        ));
        for bad in [SweepPart::new(0, 0), SweepPart::new(2, 2)] {
            assert!(matches!(
                call(&labels, bad, &mut out[..3], &mut ws),
                Err(Error::InvalidParameter { name: "part", .. })
            ));
        }
        assert!(matches!(
            call(&labels, whole, &mut out[..3], &mut ws),
            Err(Error::LengthMismatch {
                buffer: "out",
                expected: 4,
                actual: 3
            })
        ));
        let short = ws.len() - 1;
        assert!(matches!(
            call(&labels, whole, &mut out, &mut ws[..short]),
            Err(Error::WorkspaceTooSmall { .. })
        ));
        let nan = [0.0, f32::NAN, 0.0, 0.0];
        let xn = Matrix::new(&nan, 4, 1).unwrap();
        let r = if fast {
            hardest_pairs_part(xn, &labels, m, whole, &mut out, &mut ws)
        } else {
            scalar::hardest_pairs_part(xn, &labels, m, whole, &mut out, &mut ws)
        };
        assert!(matches!(
            r,
            Err(Error::NonFinite {
                buffer: "x",
                row: 1,
                ..
            })
        ));
    }
    let mut a = [HardestPair::NONE; 2];
    assert!(matches!(
        merge_hardest_pairs(&mut a, &[HardestPair::NONE; 3]),
        Err(Error::LengthMismatch {
            buffer: "other",
            expected: 2,
            actual: 3
        })
    ));

    // The loss over given choices.
    let ok = HardestPair {
        positive: 1,
        negative: 2,
        ..HardestPair::NONE
    };
    let pairs = [ok; 4];
    let p = BatchParams::new();
    let mut g = [0.0_f32; 4];
    let mut ws = vec![0.0_f32; scalar::triplet_hardest_pairs_loss_grad_workspace_len(4, 1)];
    for fast in [true, false] {
        let call = |pairs: &[HardestPair],
                    p: BatchParams,
                    g: &mut [f32],
                    ws: &mut [f32]|
         -> Result<(), Error> {
            if fast {
                triplet_hardest_pairs_loss_grad(x, pairs, p, g, ws)?;
                triplet_hardest_pairs_loss(x, pairs, p, ws)?;
            } else {
                scalar::triplet_hardest_pairs_loss_grad(x, pairs, p, g, ws)?;
                scalar::triplet_hardest_pairs_loss(x, pairs, p, ws)?;
            }
            Ok(())
        };
        call(&pairs, p, &mut g, &mut ws).unwrap();
        assert!(matches!(
            call(&pairs, p.with_margin(f32::NAN), &mut g, &mut ws),
            Err(Error::InvalidParameter { name: "margin", .. })
        ));
        assert!(matches!(
            call(&pairs, p.with_mining(Mining::SemiHard), &mut g, &mut ws),
            Err(Error::InvalidParameter { name: "mining", .. })
        ));
        assert!(matches!(
            call(&pairs, p.with_normalize(true), &mut g, &mut ws),
            Err(Error::InvalidParameter {
                name: "normalize",
                ..
            })
        ));
        assert!(matches!(
            call(&pairs[..3], p, &mut g, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "pairs",
                ..
            })
        ));
        assert!(matches!(
            call(&pairs, p, &mut g[..3], &mut ws),
            Err(Error::LengthMismatch { buffer: "grad", .. })
        ));
        assert!(matches!(
            call(&pairs, p, &mut g, &mut ws[..3]),
            Err(Error::WorkspaceTooSmall { .. })
        ));
        let mut bad = pairs;
        bad[2].negative = 4;
        assert!(matches!(
            call(&bad, p, &mut g, &mut ws),
            Err(Error::IndexOutOfRange {
                buffer: "pairs",
                position: 2,
                index: 4,
                bound: 4
            })
        ));
    }
    let inf = [0.0, 0.0, f32::INFINITY, 0.0];
    let xi = Matrix::new(&inf, 4, 1).unwrap();
    assert!(matches!(
        triplet_hardest_pairs_loss(xi, &pairs, p, &mut ws),
        Err(Error::NonFinite {
            buffer: "x",
            row: 2,
            ..
        })
    ));
}

/// Given choices may name the anchor itself or one row twice (never mined, but taken as
/// given): such a pair adds nothing to the gradient, as in the twin.
#[test]
fn coinciding_rows_in_given_choices() {
    let xd = [0.0_f32, 1.0, 1.0, 3.0, -2.0, 0.5, 2.0, 2.0];
    let x = Matrix::new(&xd, 4, 2).unwrap();
    let c = |p: u32, q: u32| HardestPair {
        positive: p,
        negative: q,
        ..HardestPair::NONE
    };
    let pairs = [c(0, 1), c(2, 1), c(3, 3), c(1, 3)];
    for metric in [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine] {
        let p = BatchParams::new()
            .with_metric(metric)
            .with_margin(5.0)
            .with_reduction(Reduction::Sum);
        let mut ws = vec![0.0_f32; scalar::triplet_hardest_pairs_loss_grad_workspace_len(4, 2)];
        let (mut gf, mut gs) = (vec![f32::NAN; 8], vec![f32::NAN; 8]);
        let f = triplet_hardest_pairs_loss_grad(x, &pairs, p, &mut gf, &mut ws).unwrap();
        let s = scalar::triplet_hardest_pairs_loss_grad(x, &pairs, p, &mut gs, &mut ws).unwrap();
        assert_eq!(
            (f.num_triplets, f.num_active),
            (s.num_triplets, s.num_active)
        );
        for (k, (&a, &b)) in gf.iter().zip(&gs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{metric:?} grad[{k}]: {a} vs {b}"
            );
        }
        // Anchor 3 against itself twice: no gradient from its term.
        assert!(gf.iter().all(|v| v.is_finite()));
    }
}
