//! Threshold miners (`triplet_mine`, `pair_mine`, `multi_similarity_mine`) and the losses
//! over pairs (`multi_similarity_loss(_pairs)(_grad)`, `contrastive_loss_pairs(_grad)`)
//! against their scalar twins: exact agreement where the distances are exact (integer
//! data, squared Euclidean; rows along the axes for the cosine), decisions that differ
//! only within the distance bound of a threshold elsewhere, the cap's subsampling, the
//! count-first sizing, degenerate batches and every error path.

use proptest::prelude::*;
use testkit::miners::{
    all_pairs, contrastive_pairs_tolerances, ms_near_threshold, ms_rule, ms_tolerances, sim_tol,
    sims, window, PairLists,
};
use testkit::rows::dist64;
use testkit::strategies::{int_value, sparse_batch, value};
use testkit::EPS;
use triplet_kernels::{
    contrastive_loss_pairs, contrastive_loss_pairs_grad, contrastive_loss_pairs_workspace_len,
    multi_similarity_loss, multi_similarity_loss_grad, multi_similarity_loss_pairs,
    multi_similarity_loss_pairs_grad, multi_similarity_loss_pairs_workspace_len,
    multi_similarity_loss_workspace_len, multi_similarity_mine, multi_similarity_mine_count,
    pair_mine, pair_mine_count, pair_mine_workspace_len, scalar, triplet_mine, triplet_mine_count,
    triplet_mine_workspace_len, ContrastiveForm, ContrastiveParams, ContrastiveReduction, Error,
    Matrix, Metric, MultiSimilarityMinerParams, MultiSimilarityParams, Pair, PairCounts,
    PairMinerParams, Triplet, TripletMinerParams, TripletType,
};

const METRICS: [Metric; 3] = [Metric::SquaredEuclidean, Metric::Euclidean, Metric::Cosine];
const TYPES: [TripletType; 4] = [
    TripletType::All,
    TripletType::Hard,
    TripletType::SemiHard,
    TripletType::Easy,
];

/// A batch: rows, dim, data and labels from up to six classes with sparse ids.
fn batch(
    rows: impl Strategy<Value = usize>,
    dim: impl Strategy<Value = usize>,
    v: impl Strategy<Value = f32> + Clone,
) -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<u32>)> {
    sparse_batch(rows, dim, v, 1009, 7)
}

/// Margins that integer data hit exactly (ties) and some that they never hit.
fn margin() -> impl Strategy<Value = f32> {
    prop_oneof![
        (-3_i8..=12).prop_map(f32::from),
        (-4.0_f32..16.0),
        Just(0.2_f32),
    ]
}

/// The mining kernels' distance bound (as tests/mining.rs), with a safety factor of 4.
fn dist_tol(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    let s = match metric {
        Metric::Cosine => 2.0,
        m => dist64(m, a, b),
    };
    4.0 * (a.len() as f64 + 8.0) * EPS * s + 1e-30
}

fn rows<'a>(x: &Matrix<'a>) -> Vec<&'a [f32]> {
    x.row_iter().collect()
}

// ---------------------------------------------------------------------------------------
// triplet_mine

fn mine_t(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    p: TripletMinerParams,
    fast: bool,
) -> Vec<Triplet> {
    let n = x.rows();
    let mut ws = vec![f32::NAN; triplet_mine_workspace_len(n, x.dim())];
    let count = if fast {
        triplet_mine_count(x, labels, metric, p, &mut ws)
    } else {
        scalar::triplet_mine_count(x, labels, metric, p, &mut ws)
    }
    .unwrap();
    let want = p.max_triplets.map_or(count, |c| c.min(count));
    // Exactly sized (the count is taken first inside) and generously sized (one sweep)
    // give the same list; the tail past the count is untouched.
    let sentinel = Triplet::new(u32::MAX, 7, 7);
    let mut exact = vec![sentinel; want];
    let mut big = vec![sentinel; n * n * n + 1];
    for out in [&mut exact, &mut big] {
        let k = if fast {
            triplet_mine(x, labels, metric, p, out, &mut ws)
        } else {
            scalar::triplet_mine(x, labels, metric, p, out, &mut ws)
        }
        .unwrap();
        assert_eq!(k, want, "written vs count-first size");
        assert!(out[k..].iter().all(|&t| t == sentinel), "tail written");
    }
    big.truncate(want);
    assert_eq!(exact, big, "exactly sized vs large output");
    exact
}

/// Every triplet of `got` is a valid candidate, and the list strictly ascends.
fn assert_valid(labels: &[u32], got: &[Triplet]) {
    for t in got {
        let (a, p, q) = (t.anchor as usize, t.positive as usize, t.negative as usize);
        assert!(
            a != p && labels[a] == labels[p] && labels[a] != labels[q],
            "{t:?}"
        );
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "not ascending");
}

/// `g` of every triplet in exactly one of the lists lies within the distance bound of a
/// finite end of the window.
fn assert_near_window(
    x: &Matrix<'_>,
    metric: Metric,
    p: &TripletMinerParams,
    a: &[Triplet],
    b: &[Triplet],
) {
    let r = rows(x);
    let (lo, hi) = window(p.triplet_type, p.margin);
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let t = match (a.get(i), b.get(j)) {
            (Some(&u), Some(&v)) if u == v => {
                i += 1;
                j += 1;
                continue;
            }
            (Some(&u), Some(&v)) if u < v => {
                i += 1;
                u
            }
            (Some(&u), None) => {
                i += 1;
                u
            }
            (_, Some(&v)) => {
                j += 1;
                v
            }
            (None, None) => unreachable!(),
        };
        let (ra, rp, rq) = (
            r[t.anchor as usize],
            r[t.positive as usize],
            r[t.negative as usize],
        );
        let g = dist64(metric, ra, rq) - dist64(metric, ra, rp);
        let tol = dist_tol(metric, ra, rq) + dist_tol(metric, ra, rp);
        let near = [lo, hi]
            .iter()
            .any(|&e| e.is_finite() && (g - f64::from(e)).abs() <= tol);
        assert!(
            near,
            "{t:?} decided differently with g = {g}, window ({lo}, {hi}], tol {tol:e}"
        );
    }
}

/// The definition on integer data under the squared Euclidean metric (every distance
/// exact in `f32`).
fn triplets_by_definition(x: &Matrix<'_>, labels: &[u32], p: &TripletMinerParams) -> Vec<Triplet> {
    let r = rows(x);
    let (lo, hi) = window(p.triplet_type, p.margin);
    let n = labels.len();
    let mut out = Vec::new();
    for a in 0..n {
        for pp in 0..n {
            if pp == a || labels[pp] != labels[a] {
                continue;
            }
            for q in 0..n {
                if labels[q] == labels[a] {
                    continue;
                }
                let g = dist64(Metric::SquaredEuclidean, r[a], r[q])
                    - dist64(Metric::SquaredEuclidean, r[a], r[pp]);
                if g > f64::from(lo) && g <= f64::from(hi) {
                    out.push(Triplet::new(a as u32, pp as u32, q as u32));
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Integer data, squared Euclidean: exact agreement with the twin and the
    /// definition, ties at the threshold included, with and without a cap.
    #[test]
    fn triplet_mine_exact_on_integer_data(
        (n, d, data, labels) in batch(1usize..14, 1usize..5, int_value()),
        m in margin(),
        cap in 0usize..40,
        seed in any::<u64>(),
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        for t in TYPES {
            let p = TripletMinerParams::new(m, t);
            let fast = mine_t(x, &labels, Metric::SquaredEuclidean, p, true);
            let twin = mine_t(x, &labels, Metric::SquaredEuclidean, p, false);
            prop_assert_eq!(&fast, &twin);
            prop_assert_eq!(&fast, &triplets_by_definition(&x, &labels, &p));
            assert_valid(&labels, &fast);
            // All and Easy split the candidates.
            if t == TripletType::All {
                let e = mine_t(x, &labels, Metric::SquaredEuclidean, p.with_triplet_type(TripletType::Easy), true);
                let mut both: Vec<Triplet> = fast.iter().chain(&e).copied().collect();
                both.sort();
                let all = mine_t(x, &labels, Metric::SquaredEuclidean, TripletMinerParams::new(f32::MAX, TripletType::All), true);
                prop_assert_eq!(both, all);
            }
            // The cap: the same subset from the fast kernel and the twin, a subset of the
            // full list in ascending order, of length min(cap, count).
            let pc = p.with_cap(cap, seed);
            let capped = mine_t(x, &labels, Metric::SquaredEuclidean, pc, true);
            prop_assert_eq!(&capped, &mine_t(x, &labels, Metric::SquaredEuclidean, pc, false));
            prop_assert_eq!(capped.len(), cap.min(fast.len()));
            prop_assert!(capped.iter().all(|t| fast.binary_search(t).is_ok()));
            assert_valid(&labels, &capped);
        }
    }

    /// General data, every metric: decisions differ from the twin only within the
    /// distance bound of a threshold.
    #[test]
    fn triplet_mine_matches_twin(
        (n, d, data, labels) in batch(1usize..12, 1usize..9, value()),
        m in -1.0f32..4.0,
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        for metric in METRICS {
            for t in TYPES {
                let p = TripletMinerParams::new(m, t);
                let fast = mine_t(x, &labels, metric, p, true);
                let twin = mine_t(x, &labels, metric, p, false);
                assert_valid(&labels, &fast);
                assert_near_window(&x, metric, &p, &fast, &twin);
            }
        }
    }

    /// The cap: the same seed gives the same subset; a cap at or above the count gives
    /// the full list; the subset ascends and belongs to the full list; different seeds
    /// over many candidates give (almost always) different subsets.
    #[test]
    fn triplet_mine_cap(
        (n, d, data, labels) in batch(2usize..16, 1usize..6, value()),
        cap in 0usize..64,
        seed in any::<u64>(),
        metric in prop::sample::select(METRICS.to_vec()),
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        let p = TripletMinerParams::new(1.0, TripletType::All);
        let full = mine_t(x, &labels, metric, p, true);
        let a = mine_t(x, &labels, metric, p.with_cap(cap, seed), true);
        let b = mine_t(x, &labels, metric, p.with_cap(cap, seed), true);
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.len(), cap.min(full.len()));
        prop_assert!(a.iter().all(|t| full.binary_search(t).is_ok()));
        assert_valid(&labels, &a);
        let k = full.len();
        prop_assert_eq!(&mine_t(x, &labels, metric, p.with_cap(k, seed), true), &full);
        prop_assert_eq!(&mine_t(x, &labels, metric, p.with_cap(k + cap, seed), true), &full);
        // Three seeds draw the same `cap`-subset of `k` with probability about
        // `C(k, cap)^-2`: below 1e-10 for `4 <= cap <= k - 8`, `k >= 40`, but `1 / k^2`
        // for a cap of one (a random batch hit it in about 8,000 cases).
        if k >= 40 && cap >= 4 && cap < k - 8 {
            let c = mine_t(x, &labels, metric, p.with_cap(cap, seed ^ 0x5555), true);
            let d = mine_t(x, &labels, metric, p.with_cap(cap, seed.wrapping_add(1)), true);
            prop_assert!(a != c || a != d, "three seeds, one subset");
        }
    }
}

#[test]
fn triplet_mine_degenerate_batches() {
    let data: Vec<f32> = (0..24).map(|i| (i * 7 % 5) as f32).collect();
    let x = Matrix::new(&data, 8, 3).unwrap();
    let mut ws = vec![0.0_f32; triplet_mine_workspace_len(8, 3)];
    // One class (no negatives), all-distinct labels (no positives), a single row.
    let one = [5_u32; 8];
    let distinct: Vec<u32> = (0..8).map(|i| i * 3 + 1).collect();
    let single = Matrix::new(&data[..3], 1, 3).unwrap();
    for metric in METRICS {
        for t in TYPES {
            let p = TripletMinerParams::new(1e30, t).with_cap(3, 1);
            for (x, labels) in [(x, &one[..]), (x, &distinct[..]), (single, &one[..1])] {
                let mut out = [Triplet::new(9, 9, 9)];
                assert_eq!(triplet_mine_count(x, labels, metric, p, &mut ws), Ok(0));
                assert_eq!(
                    scalar::triplet_mine_count(x, labels, metric, p, &mut ws),
                    Ok(0)
                );
                assert_eq!(triplet_mine(x, labels, metric, p, &mut [], &mut ws), Ok(0));
                assert_eq!(triplet_mine(x, labels, metric, p, &mut out, &mut ws), Ok(0));
                assert_eq!(
                    scalar::triplet_mine(x, labels, metric, p, &mut out, &mut ws),
                    Ok(0)
                );
                assert_eq!(out, [Triplet::new(9, 9, 9)]);
            }
        }
    }
}

#[test]
fn triplet_mine_errors() {
    let data = [0.0_f32, 1.0, 2.0, 4.0, 5.0, 7.0];
    let x = Matrix::new(&data, 6, 1).unwrap();
    let labels = [0_u32, 0, 0, 1, 1, 1];
    let m = Metric::Euclidean;
    let mut ws = vec![0.0_f32; triplet_mine_workspace_len(6, 1)];
    let p = TripletMinerParams::new(100.0, TripletType::All);
    let k = triplet_mine_count(x, &labels, m, p, &mut ws).unwrap();
    assert_eq!(k, 6 * 2 * 3);
    type Mine = fn(
        Matrix<'_>,
        &[u32],
        Metric,
        TripletMinerParams,
        &mut [Triplet],
        &mut [f32],
    ) -> Result<usize, Error>;
    type Count =
        fn(Matrix<'_>, &[u32], Metric, TripletMinerParams, &mut [f32]) -> Result<usize, Error>;
    let kernels: [(Mine, Count); 2] = [
        (triplet_mine, triplet_mine_count),
        (scalar::triplet_mine, scalar::triplet_mine_count),
    ];
    let nan = [0.0_f32, 1.0, f32::NAN, 4.0, 5.0, 7.0];
    let xn = Matrix::new(&nan, 6, 1).unwrap();
    let big = [0.0_f32, 1e30, 2.0, 4.0, 5.0, 7.0];
    let xb = Matrix::new(&big, 6, 1).unwrap();
    for (mine, count) in kernels {
        let sentinel = Triplet::new(1, 2, 3);
        let mut out = vec![sentinel; k - 1];
        let short = mine(x, &labels, m, p, &mut out, &mut ws);
        assert_eq!(
            short,
            Err(Error::LengthMismatch {
                buffer: "out",
                expected: k,
                actual: k - 1
            })
        );
        assert!(out.iter().all(|&t| t == sentinel), "written on error");
        // Under a cap, only the capped size is needed.
        assert_eq!(
            mine(x, &labels, m, p.with_cap(k - 1, 4), &mut out, &mut ws),
            Ok(k - 1)
        );
        let mut out = vec![sentinel; k];
        assert!(matches!(
            count(x, &labels[..5], m, p, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "labels",
                ..
            })
        ));
        assert!(matches!(
            mine(x, &labels[..5], m, p, &mut out, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "labels",
                ..
            })
        ));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let pb = TripletMinerParams::new(bad, TripletType::SemiHard);
            assert!(matches!(
                mine(x, &labels, m, pb, &mut out, &mut ws),
                Err(Error::InvalidParameter { name: "margin", .. })
            ));
        }
        let wl = ws.len();
        assert!(matches!(
            count(x, &labels, m, p, &mut ws[..wl - 1]),
            Err(Error::WorkspaceTooSmall { .. })
        ));
        assert!(matches!(
            mine(xn, &labels, m, p, &mut out, &mut ws),
            Err(Error::NonFinite { buffer: "x", .. })
        ));
        assert!(matches!(
            mine(xb, &labels, m, p, &mut out, &mut ws),
            Err(Error::TooLarge { buffer: "x", .. })
        ));
        assert!(out.iter().all(|&t| t == sentinel), "written on error");
    }
}

// ---------------------------------------------------------------------------------------
// pair_mine and multi_similarity_mine

/// Runs a pair miner with exactly sized and large outputs; checks the count-first size
/// and the untouched tails; returns the lists.
fn run_pairs(
    n: usize,
    count: impl Fn(&mut [f32]) -> PairCounts,
    mine: impl Fn(&mut [Pair], &mut [Pair], &mut [f32]) -> PairCounts,
    ws_len: usize,
) -> PairLists {
    let mut ws = vec![f32::NAN; ws_len];
    let c = count(&mut ws);
    let s = Pair::new(u32::MAX, 3);
    let (mut pe, mut ne) = (vec![s; c.positives], vec![s; c.negatives]);
    let (mut pb, mut nb) = (vec![s; n * n + 1], vec![s; n * n + 1]);
    assert_eq!(mine(&mut pe, &mut ne, &mut ws), c);
    assert_eq!(mine(&mut pb, &mut nb, &mut ws), c);
    assert!(pb[c.positives..]
        .iter()
        .chain(&nb[c.negatives..])
        .all(|&p| p == s));
    pb.truncate(c.positives);
    nb.truncate(c.negatives);
    assert_eq!((&pe, &ne), (&pb, &nb));
    assert!(pe.windows(2).all(|w| w[0] < w[1]) && ne.windows(2).all(|w| w[0] < w[1]));
    (pe, ne)
}

fn mine_pairs(
    x: Matrix<'_>,
    labels: &[u32],
    metric: Metric,
    p: PairMinerParams,
    fast: bool,
) -> PairLists {
    let f = |ws: &mut [f32]| {
        if fast {
            pair_mine_count(x, labels, metric, p, ws)
        } else {
            scalar::pair_mine_count(x, labels, metric, p, ws)
        }
        .unwrap()
    };
    let m = |pos: &mut [Pair], neg: &mut [Pair], ws: &mut [f32]| {
        if fast {
            pair_mine(x, labels, metric, p, pos, neg, ws)
        } else {
            scalar::pair_mine(x, labels, metric, p, pos, neg, ws)
        }
        .unwrap()
    };
    let lists = run_pairs(x.rows(), f, m, pair_mine_workspace_len(x.rows(), x.dim()));
    for q in &lists.0 {
        assert!(q.anchor != q.other && labels[q.anchor as usize] == labels[q.other as usize]);
    }
    for q in &lists.1 {
        assert!(labels[q.anchor as usize] != labels[q.other as usize]);
    }
    lists
}

fn mine_ms(x: Matrix<'_>, labels: &[u32], p: MultiSimilarityMinerParams, fast: bool) -> PairLists {
    let f = |ws: &mut [f32]| {
        if fast {
            multi_similarity_mine_count(x, labels, p, ws)
        } else {
            scalar::multi_similarity_mine_count(x, labels, p, ws)
        }
        .unwrap()
    };
    let m = |pos: &mut [Pair], neg: &mut [Pair], ws: &mut [f32]| {
        if fast {
            multi_similarity_mine(x, labels, p, pos, neg, ws)
        } else {
            scalar::multi_similarity_mine(x, labels, p, pos, neg, ws)
        }
        .unwrap()
    };
    run_pairs(x.rows(), f, m, pair_mine_workspace_len(x.rows(), x.dim()))
}

/// The pairs in exactly one of two ascending lists.
fn sym_diff(a: &[Pair], b: &[Pair]) -> Vec<Pair> {
    let mut out: Vec<Pair> = a
        .iter()
        .filter(|p| b.binary_search(p).is_err())
        .copied()
        .collect();
    out.extend(b.iter().filter(|p| a.binary_search(p).is_err()));
    out
}

/// Batches of rows along the axes (`c e_k`, `c = +-2^k`): every cosine similarity is 0
/// or +-1 exactly in both kernels.
fn axis_batch() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<u32>)> {
    (1usize..14, 1usize..5, 1u32..=5).prop_flat_map(|(n, d, classes)| {
        (
            Just(n),
            Just(d),
            proptest::collection::vec((0..d, -1_i32..=2, any::<bool>()), n).prop_map(move |rs| {
                let mut v = vec![0.0_f32; n * d];
                for (i, (k, e, neg)) in rs.into_iter().enumerate() {
                    let c = 2.0_f32.powi(e);
                    v[i * d + k] = if neg { -c } else { c };
                }
                v
            }),
            proptest::collection::vec((0..classes).prop_map(|c| c * 13 + 2), n),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Integer data, squared Euclidean: exact agreement (ties at the margins included).
    #[test]
    fn pair_mine_exact_on_integer_data(
        (n, d, data, labels) in batch(1usize..16, 1usize..5, int_value()),
        pm in margin(),
        nm in margin(),
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        let p = PairMinerParams::new(pm, nm);
        let fast = mine_pairs(x, &labels, Metric::SquaredEuclidean, p, true);
        let twin = mine_pairs(x, &labels, Metric::SquaredEuclidean, p, false);
        prop_assert_eq!(&fast, &twin);
        let r = rows(&x);
        let mut want: PairLists = (Vec::new(), Vec::new());
        for a in 0..n {
            for j in 0..n {
                let dd = dist64(Metric::SquaredEuclidean, r[a], r[j]);
                if labels[a] != labels[j] {
                    if dd < f64::from(nm) {
                        want.1.push(Pair::new(a as u32, j as u32));
                    }
                } else if a != j && dd > f64::from(pm) {
                    want.0.push(Pair::new(a as u32, j as u32));
                }
            }
        }
        prop_assert_eq!(fast, want);
    }

    /// General data: decisions differ from the twin only within the distance bound of a
    /// margin.
    #[test]
    fn pair_mine_matches_twin(
        (n, d, data, labels) in batch(1usize..16, 1usize..9, value()),
        pm in 0.0f32..4.0,
        nm in 0.0f32..4.0,
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        let r = rows(&x);
        let p = PairMinerParams::new(pm, nm);
        for metric in METRICS {
            let fast = mine_pairs(x, &labels, metric, p, true);
            let twin = mine_pairs(x, &labels, metric, p, false);
            for (k, m) in [(0, pm), (1, nm)] {
                let (f, t) = if k == 0 { (&fast.0, &twin.0) } else { (&fast.1, &twin.1) };
                for q in sym_diff(f, t) {
                    let (a, j) = (r[q.anchor as usize], r[q.other as usize]);
                    let dd = dist64(metric, a, j);
                    let tol = dist_tol(metric, a, j);
                    prop_assert!((dd - f64::from(m)).abs() <= tol, "{:?}: d {} margin {} tol {:e}", q, dd, m, tol);
                }
            }
        }
    }

    /// Rows along the axes: exact agreement with the twin and the rule, ties included.
    #[test]
    fn multi_similarity_mine_exact_on_axes(
        (n, d, data, labels) in axis_batch(),
        eps in prop_oneof![Just(0.0f32), Just(1.0f32), Just(-1.0f32), -1.5f32..1.5],
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        let p = MultiSimilarityMinerParams::new(eps);
        let fast = mine_ms(x, &labels, p, true);
        prop_assert_eq!(&fast, &mine_ms(x, &labels, p, false));
        prop_assert_eq!(&fast, &ms_rule(&sims(&x), &labels, f64::from(eps)));
    }

    /// General data: decisions differ from the twin only where a similarity lies within
    /// twice the similarity bound of its threshold.
    #[test]
    fn multi_similarity_mine_matches_twin(
        (n, d, data, labels) in batch(1usize..16, 1usize..9, value()),
        eps in -0.5f32..0.5,
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        let p = MultiSimilarityMinerParams::new(eps);
        let fast = mine_ms(x, &labels, p, true);
        let twin = mine_ms(x, &labels, p, false);
        let s = sims(&x);
        let tol = 2.0 * sim_tol(d);
        let e = f64::from(eps);
        for (k, (f, t)) in [(&fast.0, &twin.0), (&fast.1, &twin.1)].into_iter().enumerate() {
            for q in sym_diff(f, t) {
                // The threshold is the hardest pair of the other kind.
                let near = ms_near_threshold(&s, &labels, e, k == 0, q, tol);
                prop_assert!(near, "{:?} decided differently away from its threshold", q);
            }
        }
    }
}

#[test]
fn pair_miners_degenerate_batches() {
    let data: Vec<f32> = (0..24).map(|i| (i * 7 % 5) as f32 + 1.0).collect();
    let x = Matrix::new(&data, 8, 3).unwrap();
    let mut ws = vec![0.0_f32; pair_mine_workspace_len(8, 3)];
    let one = [5_u32; 8];
    let distinct: Vec<u32> = (0..8).map(|i| i * 3 + 1).collect();
    let wide = PairMinerParams::new(-1.0, 1e30);
    for metric in METRICS {
        // One class: every positive pair is farther than -1, no negatives.
        let c = pair_mine_count(x, &one, metric, wide, &mut ws).unwrap();
        assert_eq!(
            c,
            PairCounts {
                positives: 56,
                negatives: 0
            }
        );
        assert_eq!(
            scalar::pair_mine_count(x, &one, metric, wide, &mut ws).unwrap(),
            c
        );
        // All-distinct labels: no positives, every negative nearer than 1e30.
        let c = pair_mine_count(x, &distinct, metric, wide, &mut ws).unwrap();
        assert_eq!(
            c,
            PairCounts {
                positives: 0,
                negatives: 56
            }
        );
        // Nothing kept: empty outputs suffice.
        let none = PairMinerParams::new(1e30, -1.0);
        let c = pair_mine(x, &one, metric, none, &mut [], &mut [], &mut ws).unwrap();
        assert_eq!(c, PairCounts::default());
    }
    // The epsilon rule needs a positive and a negative per anchor.
    let mp = MultiSimilarityMinerParams::new(10.0);
    for labels in [&one[..], &distinct[..]] {
        assert_eq!(
            multi_similarity_mine_count(x, labels, mp, &mut ws),
            Ok(PairCounts::default())
        );
        assert_eq!(
            scalar::multi_similarity_mine_count(x, labels, mp, &mut ws),
            Ok(PairCounts::default())
        );
        assert_eq!(
            multi_similarity_mine(x, labels, mp, &mut [], &mut [], &mut ws),
            Ok(PairCounts::default())
        );
    }
}

#[test]
fn pair_miner_errors() {
    let data = [0.0_f32, 1.0, 2.0, 4.0, 5.0, 7.0];
    let x = Matrix::new(&data, 6, 1).unwrap();
    let labels = [0_u32, 0, 0, 1, 1, 1];
    let m = Metric::Euclidean;
    let mut ws = vec![0.0_f32; pair_mine_workspace_len(6, 1)];
    let wl = ws.len();
    let nan = [0.0_f32, 1.0, f32::NAN, 4.0, 5.0, 7.0];
    let xn = Matrix::new(&nan, 6, 1).unwrap();
    let s = Pair::new(9, 9);
    let (mut pos, mut neg) = (vec![s; 36], vec![s; 36]);
    let all = PairMinerParams::new(-1.0, 100.0);
    for fast in [true, false] {
        let pm = |x: Matrix<'_>,
                  l: &[u32],
                  p: PairMinerParams,
                  pos: &mut [Pair],
                  neg: &mut [Pair],
                  ws: &mut [f32]| {
            if fast {
                pair_mine(x, l, m, p, pos, neg, ws)
            } else {
                scalar::pair_mine(x, l, m, p, pos, neg, ws)
            }
        };
        let msm = |x: Matrix<'_>,
                   l: &[u32],
                   p: MultiSimilarityMinerParams,
                   pos: &mut [Pair],
                   neg: &mut [Pair],
                   ws: &mut [f32]| {
            if fast {
                multi_similarity_mine(x, l, p, pos, neg, ws)
            } else {
                scalar::multi_similarity_mine(x, l, p, pos, neg, ws)
            }
        };
        assert_eq!(
            pm(x, &labels, all, &mut pos[..11], &mut neg, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "positives",
                expected: 12,
                actual: 11
            })
        );
        assert_eq!(
            pm(x, &labels, all, &mut pos, &mut neg[..17], &mut ws),
            Err(Error::LengthMismatch {
                buffer: "negatives",
                expected: 18,
                actual: 17
            })
        );
        assert!(matches!(
            pm(x, &labels[..5], all, &mut pos, &mut neg, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "labels",
                ..
            })
        ));
        assert!(matches!(
            pm(
                x,
                &labels,
                all.with_pos_margin(f32::NAN),
                &mut pos,
                &mut neg,
                &mut ws
            ),
            Err(Error::InvalidParameter {
                name: "pos_margin",
                ..
            })
        ));
        assert!(matches!(
            pm(
                x,
                &labels,
                all.with_neg_margin(f32::INFINITY),
                &mut pos,
                &mut neg,
                &mut ws
            ),
            Err(Error::InvalidParameter {
                name: "neg_margin",
                ..
            })
        ));
        assert!(matches!(
            pm(x, &labels, all, &mut pos, &mut neg, &mut ws[..wl - 1]),
            Err(Error::WorkspaceTooSmall { .. })
        ));
        assert!(matches!(
            pm(xn, &labels, all, &mut pos, &mut neg, &mut ws),
            Err(Error::NonFinite { buffer: "x", .. })
        ));
        let mp = MultiSimilarityMinerParams::new(10.0);
        assert!(matches!(
            msm(x, &labels, mp, &mut pos[..11], &mut neg, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "positives",
                expected: 12,
                ..
            })
        ));
        assert!(matches!(
            msm(
                x,
                &labels,
                mp.with_epsilon(f32::NAN),
                &mut pos,
                &mut neg,
                &mut ws
            ),
            Err(Error::InvalidParameter {
                name: "epsilon",
                ..
            })
        ));
        assert!(matches!(
            msm(x, &labels[..2], mp, &mut pos, &mut neg, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "labels",
                ..
            })
        ));
        assert!(matches!(
            msm(xn, &labels, mp, &mut pos, &mut neg, &mut ws),
            Err(Error::NonFinite { buffer: "x", .. })
        ));
        assert!(pos.iter().chain(&neg).all(|&p| p == s), "written on error");
    }
}

// ---------------------------------------------------------------------------------------
// Multi-similarity loss

fn ms_params() -> impl Strategy<Value = MultiSimilarityParams> {
    prop_oneof![
        Just(MultiSimilarityParams::pytorch_metric_learning()),
        (0.1f32..10.0, 0.1f32..80.0, -1.0f32..1.0)
            .prop_map(|(a, b, c)| MultiSimilarityParams::new(a, b, c)),
    ]
}

#[derive(Clone, Copy)]
enum MsMode<'a> {
    All(&'a [u32]),
    Listed(&'a [Pair], &'a [Pair]),
}

/// `(loss, loss of the grad call, grad)` of the fast kernel or the twin.
fn ms_run(
    x: Matrix<'_>,
    mode: MsMode<'_>,
    p: MultiSimilarityParams,
    fast: bool,
) -> (f32, f32, Vec<f32>) {
    let (n, d) = (x.rows(), x.dim());
    let mut g = vec![f32::NAN; n * d];
    let (l, lg) = match mode {
        MsMode::All(labels) => {
            let mut ws = vec![
                f32::NAN;
                if fast {
                    multi_similarity_loss_workspace_len(n, d)
                } else {
                    scalar::multi_similarity_loss_workspace_len(n, d)
                }
            ];
            if fast {
                (
                    multi_similarity_loss(x, labels, p, &mut ws).unwrap(),
                    multi_similarity_loss_grad(x, labels, p, &mut g, &mut ws).unwrap(),
                )
            } else {
                (
                    scalar::multi_similarity_loss(x, labels, p, &mut ws).unwrap(),
                    scalar::multi_similarity_loss_grad(x, labels, p, &mut g, &mut ws).unwrap(),
                )
            }
        }
        MsMode::Listed(pos, neg) => {
            let k = pos.len() + neg.len();
            let mut ws = vec![
                f32::NAN;
                if fast {
                    multi_similarity_loss_pairs_workspace_len(n, d, k)
                } else {
                    scalar::multi_similarity_loss_pairs_workspace_len(n, d, k)
                }
            ];
            if fast {
                (
                    multi_similarity_loss_pairs(x, pos, neg, p, &mut ws).unwrap(),
                    multi_similarity_loss_pairs_grad(x, pos, neg, p, &mut g, &mut ws).unwrap(),
                )
            } else {
                (
                    scalar::multi_similarity_loss_pairs(x, pos, neg, p, &mut ws).unwrap(),
                    scalar::multi_similarity_loss_pairs_grad(x, pos, neg, p, &mut g, &mut ws)
                        .unwrap(),
                )
            }
        }
    };
    (l, lg, g)
}

fn assert_ms_close(
    x: Matrix<'_>,
    mode: MsMode<'_>,
    pos: &[Pair],
    neg: &[Pair],
    p: MultiSimilarityParams,
) {
    let (lf, lfg, gf) = ms_run(x, mode, p, true);
    let (lt, ltg, gt) = ms_run(x, mode, p, false);
    assert_eq!(lf.to_bits(), lfg.to_bits(), "loss and grad call disagree");
    assert_eq!(
        lt.to_bits(),
        ltg.to_bits(),
        "twin: loss and grad call disagree"
    );
    let (tl, tg) = ms_tolerances(&x, pos, neg, &p);
    assert!(
        (f64::from(lf) - f64::from(lt)).abs() <= tl,
        "loss: fast {lf}, twin {lt}, tol {tl:e}"
    );
    let d = x.dim();
    testkit::assert_close("grad", &gf, &gt, |k| tg[k / d]);
}

/// Random pair lists (duplicates and self pairs allowed) over `n` rows.
fn pair_lists(n: usize) -> impl Strategy<Value = PairLists> {
    let pair = (0..n as u32, 0..n as u32).prop_map(|(a, b)| Pair::new(a, b));
    (
        proptest::collection::vec(pair.clone(), 0..3 * n),
        proptest::collection::vec(pair, 0..3 * n),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn multi_similarity_loss_matches_twin(
        (n, d, data, labels) in batch(1usize..20, 1usize..10, value()),
        p in ms_params(),
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        let (pos, neg) = all_pairs(&labels);
        assert_ms_close(x, MsMode::All(&labels), &pos, &neg, p);
        // Over all pairs listed explicitly: the same loss up to the bounds.
        assert_ms_close(x, MsMode::Listed(&pos, &neg), &pos, &neg, p);
    }

    #[test]
    fn multi_similarity_loss_pairs_matches_twin(
        ((n, d, data, _), (pos, neg)) in batch(1usize..16, 1usize..10, value())
            .prop_flat_map(|b| { let n = b.0; (Just(b), pair_lists(n)) }),
        p in ms_params(),
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        assert_ms_close(x, MsMode::Listed(&pos, &neg), &pos, &neg, p);
    }

    /// The mined pairs feed the loss (pytorch-metric-learning's miner + loss).
    #[test]
    fn multi_similarity_loss_over_mined_pairs(
        (n, d, data, labels) in batch(2usize..16, 1usize..8, value()),
        eps in 0.0f32..0.5,
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        let (pos, neg) = mine_ms(x, &labels, MultiSimilarityMinerParams::new(eps), true);
        assert_ms_close(x, MsMode::Listed(&pos, &neg), &pos, &neg, MultiSimilarityParams::pytorch_metric_learning());
    }
}

#[test]
fn multi_similarity_degenerate_batches() {
    let data: Vec<f32> = (0..24).map(|i| (i * 7 % 5) as f32 - 1.5).collect();
    let x = Matrix::new(&data, 8, 3).unwrap();
    let p = MultiSimilarityParams::pytorch_metric_learning();
    // A single row (no pair): 0. Two rows give two ordered pairs of one kind, not 0.
    let single = Matrix::new(&data[..3], 1, 3).unwrap();
    for fast in [true, false] {
        let (l, lg, g) = ms_run(single, MsMode::All(&[4]), p, fast);
        assert_eq!((l, lg), (0.0, 0.0));
        assert!(g.iter().all(|&v| v == 0.0));
    }
    let one_pair = [Pair::new(0, 1)];
    for fast in [true, false] {
        let (l, _, g) = ms_run(x, MsMode::Listed(&one_pair, &one_pair), p, fast);
        assert_eq!(l, 0.0);
        assert!(g.iter().all(|&v| v == 0.0));
        let (l, _, g) = ms_run(x, MsMode::Listed(&[], &[]), p, fast);
        assert_eq!(l, 0.0);
        assert!(g.iter().all(|&v| v == 0.0));
    }
    // One class: only the positive part; all-distinct labels: only the negative part.
    for labels in [[3_u32; 8].to_vec(), (0..8).collect()] {
        let (pos, neg) = all_pairs(&labels);
        assert_ms_close(x, MsMode::All(&labels), &pos, &neg, p);
        assert!(ms_run(x, MsMode::All(&labels), p, true).0 > 0.0);
    }
}

#[test]
fn multi_similarity_errors() {
    let data = [1.0_f32, 0.0, 1.0, 0.5, 0.5, 1.0, 0.1, 1.0];
    let x = Matrix::new(&data, 4, 2).unwrap();
    let labels = [0_u32, 0, 1, 1];
    let p = MultiSimilarityParams::pytorch_metric_learning();
    let mut ws = vec![
        0.0_f32;
        multi_similarity_loss_workspace_len(4, 2)
            + scalar::multi_similarity_loss_workspace_len(4, 2)
    ];
    let mut g = vec![0.0_f32; 8];
    let nan = [1.0_f32, 0.0, f32::NAN, 0.5, 0.5, 1.0, 0.1, 1.0];
    let xn = Matrix::new(&nan, 4, 2).unwrap();
    for fast in [true, false] {
        let lg =
            |x: Matrix<'_>, l: &[u32], p: MultiSimilarityParams, g: &mut [f32], ws: &mut [f32]| {
                if fast {
                    multi_similarity_loss_grad(x, l, p, g, ws)
                } else {
                    scalar::multi_similarity_loss_grad(x, l, p, g, ws)
                }
            };
        let lp = |x: Matrix<'_>,
                  pos: &[Pair],
                  neg: &[Pair],
                  p: MultiSimilarityParams,
                  g: &mut [f32],
                  ws: &mut [f32]| {
            if fast {
                multi_similarity_loss_pairs_grad(x, pos, neg, p, g, ws)
            } else {
                scalar::multi_similarity_loss_pairs_grad(x, pos, neg, p, g, ws)
            }
        };
        assert!(matches!(
            lg(x, &labels[..3], p, &mut g, &mut ws),
            Err(Error::LengthMismatch {
                buffer: "labels",
                ..
            })
        ));
        assert!(matches!(
            lg(x, &labels, p, &mut g[..7], &mut ws),
            Err(Error::LengthMismatch { buffer: "grad", .. })
        ));
        assert!(matches!(
            lg(x, &labels, p, &mut g, &mut ws[..1]),
            Err(Error::WorkspaceTooSmall { .. })
        ));
        for (bad, name) in [
            (p.with_alpha(0.0), "alpha"),
            (p.with_alpha(f32::NAN), "alpha"),
            (p.with_beta(-1.0), "beta"),
            (p.with_beta(2e4), "beta"),
            (p.with_base(f32::INFINITY), "base"),
        ] {
            assert_eq!(
                lg(x, &labels, bad, &mut g, &mut ws)
                    .map_err(|e| matches!(e, Error::InvalidParameter { name: n, .. } if n == name)),
                Err(true),
                "{name}"
            );
            assert!(matches!(
                lp(x, &[], &[], bad, &mut g, &mut ws),
                Err(Error::InvalidParameter { .. })
            ));
        }
        assert!(matches!(
            lg(xn, &labels, p, &mut g, &mut ws),
            Err(Error::NonFinite { buffer: "x", .. })
        ));
        let ok = [Pair::new(0, 1)];
        let bad = [Pair::new(0, 1), Pair::new(3, 4)];
        assert_eq!(
            lp(x, &bad, &ok, p, &mut g, &mut ws),
            Err(Error::IndexOutOfRange {
                buffer: "positives",
                position: 1,
                index: 4,
                bound: 4
            })
        );
        assert!(matches!(
            lp(x, &ok, &bad, p, &mut g, &mut ws),
            Err(Error::IndexOutOfRange {
                buffer: "negatives",
                ..
            })
        ));
        assert!(matches!(
            lp(x, &ok, &ok, p, &mut g[..1], &mut ws),
            Err(Error::LengthMismatch { buffer: "grad", .. })
        ));
        assert!(matches!(
            lp(x, &ok, &ok, p, &mut g, &mut []),
            Err(Error::WorkspaceTooSmall { .. })
        ));
        assert!(matches!(
            lp(xn, &ok, &ok, p, &mut g, &mut ws),
            Err(Error::NonFinite { buffer: "x", .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------
// Contrastive loss over pairs

fn contrastive_params() -> impl Strategy<Value = ContrastiveParams> {
    (
        0.0f32..2.0,
        0.0f32..4.0,
        prop::sample::select(vec![ContrastiveForm::Linear, ContrastiveForm::Squared]),
        prop::sample::select(vec![
            ContrastiveReduction::MeanNonzeroPerPart,
            ContrastiveReduction::MeanPerPart,
            ContrastiveReduction::Mean,
            ContrastiveReduction::Sum,
        ]),
    )
        .prop_map(|(pm, nm, f, r)| {
            ContrastiveParams::new(pm, nm)
                .with_form(f)
                .with_reduction(r)
        })
}

fn contrastive_run(
    x: Matrix<'_>,
    metric: Metric,
    p: ContrastiveParams,
    pos: &[Pair],
    neg: &[Pair],
    fast: bool,
) -> (f32, f32, Vec<f32>) {
    let (n, d) = (x.rows(), x.dim());
    let k = pos.len() + neg.len();
    let mut ws = vec![
        f32::NAN;
        contrastive_loss_pairs_workspace_len(n, d, k)
            .max(scalar::contrastive_loss_pairs_workspace_len(n, d, k))
    ];
    let mut g = vec![f32::NAN; n * d];
    if fast {
        (
            contrastive_loss_pairs(x, metric, p, pos, neg, &mut ws).unwrap(),
            contrastive_loss_pairs_grad(x, metric, p, pos, neg, &mut g, &mut ws).unwrap(),
            g,
        )
    } else {
        (
            scalar::contrastive_loss_pairs(x, metric, p, pos, neg, &mut ws).unwrap(),
            scalar::contrastive_loss_pairs_grad(x, metric, p, pos, neg, &mut g, &mut ws).unwrap(),
            g,
        )
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn contrastive_loss_pairs_matches_twin(
        ((n, d, data, _), (pos, neg)) in batch(1usize..16, 1usize..10, value())
            .prop_flat_map(|b| { let n = b.0; (Just(b), pair_lists(n)) }),
        p in contrastive_params(),
        metric in prop::sample::select(METRICS.to_vec()),
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        let (lf, lfg, gf) = contrastive_run(x, metric, p, &pos, &neg, true);
        let (lt, ltg, gt) = contrastive_run(x, metric, p, &pos, &neg, false);
        prop_assert_eq!(lf.to_bits(), lfg.to_bits());
        prop_assert_eq!(lt.to_bits(), ltg.to_bits());
        if let Some((tl, tg)) = contrastive_pairs_tolerances(&x, metric, &pos, &neg, &p) {
            prop_assert!((f64::from(lf) - f64::from(lt)).abs() <= tl, "loss: fast {}, twin {}, tol {:e}", lf, lt, tl);
            testkit::assert_close("grad", &gf, &gt, |k| tg[k / d]);
        }
    }

    /// Integer data, squared Euclidean, the pairs a pair miner kept: the loss over them
    /// is exact up to the final rounding in both.
    #[test]
    fn contrastive_loss_over_mined_pairs(
        (n, d, data, labels) in batch(2usize..14, 1usize..5, int_value()),
        pm in 0_u8..=12,
        nm in 0_u8..=40,
    ) {
        let x = Matrix::new(&data, n, d).unwrap();
        let (pm, nm) = (f32::from(pm), f32::from(nm));
        let m = Metric::SquaredEuclidean;
        let (pos, neg) = mine_pairs(x, &labels, m, PairMinerParams::new(pm, nm), true);
        let p = ContrastiveParams::new(pm, nm).with_reduction(ContrastiveReduction::Sum);
        let (lf, _, gf) = contrastive_run(x, m, p, &pos, &neg, true);
        let (lt, _, gt) = contrastive_run(x, m, p, &pos, &neg, false);
        prop_assert_eq!(lf, lt);
        prop_assert_eq!(gf, gt);
    }
}

#[test]
fn contrastive_loss_pairs_degenerate_and_errors() {
    let data = [0.0_f32, 1.0, 2.0, 4.0];
    let x = Matrix::new(&data, 4, 1).unwrap();
    let p = ContrastiveParams::new(0.5, 1.0);
    for fast in [true, false] {
        // Empty lists: zero loss, zero gradient.
        let (l, lg, g) = contrastive_run(x, Metric::Euclidean, p, &[], &[], fast);
        assert_eq!((l, lg), (0.0, 0.0));
        assert!(g.iter().all(|&v| v == 0.0));
        let mut ws = vec![0.0_f32; 64];
        let mut g = vec![0.0_f32; 4];
        let cg = |x: Matrix<'_>,
                  p: ContrastiveParams,
                  pos: &[Pair],
                  neg: &[Pair],
                  g: &mut [f32],
                  ws: &mut [f32]| {
            if fast {
                contrastive_loss_pairs_grad(x, Metric::Euclidean, p, pos, neg, g, ws)
            } else {
                scalar::contrastive_loss_pairs_grad(x, Metric::Euclidean, p, pos, neg, g, ws)
            }
        };
        let ok = [Pair::new(0, 1)];
        assert_eq!(
            cg(x, p, &ok, &[Pair::new(7, 0)], &mut g, &mut ws),
            Err(Error::IndexOutOfRange {
                buffer: "negatives",
                position: 0,
                index: 7,
                bound: 4
            })
        );
        assert!(matches!(
            cg(x, p, &[Pair::new(0, 4)], &ok, &mut g, &mut ws),
            Err(Error::IndexOutOfRange {
                buffer: "positives",
                ..
            })
        ));
        assert!(matches!(
            cg(x, p, &ok, &ok, &mut g[..3], &mut ws),
            Err(Error::LengthMismatch { buffer: "grad", .. })
        ));
        assert!(matches!(
            cg(x, p, &ok, &ok, &mut g, &mut []),
            Err(Error::WorkspaceTooSmall { .. })
        ));
        assert!(matches!(
            cg(x, p.with_pos_margin(f32::NAN), &ok, &ok, &mut g, &mut ws),
            Err(Error::InvalidParameter {
                name: "pos_margin",
                ..
            })
        ));
        let nan = [0.0_f32, f32::INFINITY, 2.0, 4.0];
        assert!(matches!(
            cg(
                Matrix::new(&nan, 4, 1).unwrap(),
                p,
                &ok,
                &ok,
                &mut g,
                &mut ws
            ),
            Err(Error::NonFinite { buffer: "x", .. })
        ));
    }
}

/// Above 1024 rows the loss streams over blocks of rows instead of holding the whole
/// similarity matrix: that path against the twin.
#[test]
fn multi_similarity_loss_streams_above_1024_rows() {
    let (n, d) = (1030, 3);
    let data: Vec<f32> = (0..n * d)
        .map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 97.0)
        .collect();
    let x = Matrix::new(&data, n, d).unwrap();
    let labels: Vec<u32> = (0..n as u32).map(|i| i / 4 * 3).collect();
    let (pos, neg) = all_pairs(&labels);
    let p = MultiSimilarityParams::pytorch_metric_learning();
    assert_ms_close(x, MsMode::All(&labels), &pos, &neg, p);
}
