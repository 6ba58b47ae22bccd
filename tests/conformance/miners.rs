//! Ops `triplet_mine`, `pair_mine` and `multi_similarity_mine`: threshold mining, index
//! lists compared exactly. Every case is checked against the fast kernels and their
//! scalar twins, and the counting functions against the lists.

use crate::case::{Case, Mat, TripletIdx};
use serde::Deserialize;
use triplet_kernels::{
    multi_similarity_mine, multi_similarity_mine_count, pair_mine, pair_mine_count,
    pair_mine_workspace_len, scalar, triplet_mine, triplet_mine_count, triplet_mine_workspace_len,
    Matrix, MultiSimilarityMinerParams, Pair, PairCounts, PairMinerParams, Triplet,
    TripletMinerParams, TripletType,
};

fn err(e: triplet_kernels::Error) -> String {
    e.to_string()
}

/// The format's `type_of_triplets`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TypeName {
    All,
    Hard,
    Semihard,
    Easy,
}

impl From<TypeName> for TripletType {
    fn from(t: TypeName) -> Self {
        match t {
            TypeName::All => TripletType::All,
            TypeName::Hard => TripletType::Hard,
            TypeName::Semihard => TripletType::SemiHard,
            TypeName::Easy => TripletType::Easy,
        }
    }
}

/// An `[i, j]` index pair.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(from = "[u32; 2]")]
pub struct PairIdx(pub Pair);

impl From<[u32; 2]> for PairIdx {
    fn from([a, b]: [u32; 2]) -> Self {
        PairIdx(Pair::new(a, b))
    }
}

pub fn pairs(idx: Vec<PairIdx>) -> Vec<Pair> {
    idx.into_iter().map(|p| p.0).collect()
}

fn same<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let first = got.iter().zip(want).position(|(g, w)| g != w);
    Err(format!(
        "{what}: {} entries, want {}; first difference at {first:?}: got {:?}, want {:?}",
        got.len(),
        want.len(),
        first.and_then(|i| got.get(i)),
        first.and_then(|i| want.get(i)),
    ))
}

/// Op `triplet_mine`.
pub fn check_triplet(case: &Case<'_>) -> Result<(), String> {
    let xm: Mat = case.get("x")?;
    let x = xm.matrix()?;
    let labels: Vec<u32> = case.get("labels")?;
    let metric = case.metric()?;
    let kind: TypeName = case.get("type_of_triplets")?;
    let params = TripletMinerParams::new(case.get::<f64>("margin")? as f32, kind.into());
    let want: Vec<Triplet> = case
        .get::<Vec<TripletIdx>>("expected.triplets")?
        .into_iter()
        .map(|t| t.0)
        .collect();
    let want_n: usize = case.get("expected.num_triplets")?;
    if want_n != want.len() {
        return Err(format!("num_triplets {want_n} != {} listed", want.len()));
    }
    let mut ws = vec![f32::NAN; triplet_mine_workspace_len(x.rows(), x.dim())];
    for twin in ["fast", "scalar"] {
        let count = if twin == "fast" {
            triplet_mine_count(x, &labels, metric, params, &mut ws)
        } else {
            scalar::triplet_mine_count(x, &labels, metric, params, &mut ws)
        }
        .map_err(err)?;
        if count != want_n {
            return Err(format!("{twin} count: got {count}, want {want_n}"));
        }
        // Exactly sized (a count first inside), then generously sized (one sweep).
        for len in [want_n, want_n + x.rows() * x.rows() * x.rows()] {
            let mut out = vec![Triplet::new(u32::MAX, 0, 0); len];
            let k = if twin == "fast" {
                triplet_mine(x, &labels, metric, params, &mut out, &mut ws)
            } else {
                scalar::triplet_mine(x, &labels, metric, params, &mut out, &mut ws)
            }
            .map_err(err)?;
            same(&format!("{twin} triplets"), &out[..k], &want)?;
        }
    }
    Ok(())
}

fn check_pairs(
    what: &str,
    got: (PairCounts, &[Pair], &[Pair]),
    want_pos: &[Pair],
    want_neg: &[Pair],
) -> Result<(), String> {
    let (c, pos, neg) = got;
    same(
        &format!("{what} positive_pairs"),
        &pos[..c.positives],
        want_pos,
    )?;
    same(
        &format!("{what} negative_pairs"),
        &neg[..c.negatives],
        want_neg,
    )
}

/// Runs a pair miner (`run(twin, positives, negatives)`) with exactly sized and with
/// generously sized outputs.
fn run_pair_miner<F>(
    x: Matrix<'_>,
    want_pos: &[Pair],
    want_neg: &[Pair],
    mut run: F,
) -> Result<(), String>
where
    F: FnMut(&str, &mut [Pair], &mut [Pair]) -> Result<PairCounts, triplet_kernels::Error>,
{
    let big = x.rows() * x.rows();
    for twin in ["fast", "scalar"] {
        for (lp, ln) in [(want_pos.len(), want_neg.len()), (big, big)] {
            let mut pos = vec![Pair::new(u32::MAX, 0); lp];
            let mut neg = vec![Pair::new(u32::MAX, 0); ln];
            let c = run(twin, &mut pos, &mut neg).map_err(err)?;
            check_pairs(twin, (c, &pos, &neg), want_pos, want_neg)?;
        }
    }
    Ok(())
}

/// Op `pair_mine`.
pub fn check_pair(case: &Case<'_>) -> Result<(), String> {
    let xm: Mat = case.get("x")?;
    let x = xm.matrix()?;
    let labels: Vec<u32> = case.get("labels")?;
    let metric = case.metric()?;
    let params = PairMinerParams::new(
        case.get::<f64>("pos_margin")? as f32,
        case.get::<f64>("neg_margin")? as f32,
    );
    let want_pos = pairs(case.get("expected.positive_pairs")?);
    let want_neg = pairs(case.get("expected.negative_pairs")?);
    let mut ws = vec![f32::NAN; pair_mine_workspace_len(x.rows(), x.dim())];
    let want_c = PairCounts {
        positives: want_pos.len(),
        negatives: want_neg.len(),
    };
    let c = pair_mine_count(x, &labels, metric, params, &mut ws).map_err(err)?;
    let c64 = scalar::pair_mine_count(x, &labels, metric, params, &mut ws).map_err(err)?;
    if c != want_c || c64 != want_c {
        return Err(format!(
            "counts: fast {c:?}, scalar {c64:?}, want {want_c:?}"
        ));
    }
    run_pair_miner(x, &want_pos, &want_neg, |twin, pos, neg| {
        if twin == "fast" {
            pair_mine(x, &labels, metric, params, pos, neg, &mut ws)
        } else {
            scalar::pair_mine(x, &labels, metric, params, pos, neg, &mut ws)
        }
    })
}

/// Op `multi_similarity_mine`.
pub fn check_ms(case: &Case<'_>) -> Result<(), String> {
    let xm: Mat = case.get("x")?;
    let x = xm.matrix()?;
    let labels: Vec<u32> = case.get("labels")?;
    if case.get::<String>("metric")? != "cosine" {
        return Err("multi_similarity_mine is defined on cosine similarity".into());
    }
    let params = MultiSimilarityMinerParams::new(case.get::<f64>("epsilon")? as f32);
    let want_pos = pairs(case.get("expected.positive_pairs")?);
    let want_neg = pairs(case.get("expected.negative_pairs")?);
    let mut ws = vec![f32::NAN; pair_mine_workspace_len(x.rows(), x.dim())];
    let want_c = PairCounts {
        positives: want_pos.len(),
        negatives: want_neg.len(),
    };
    let c = multi_similarity_mine_count(x, &labels, params, &mut ws).map_err(err)?;
    let c64 = scalar::multi_similarity_mine_count(x, &labels, params, &mut ws).map_err(err)?;
    if c != want_c || c64 != want_c {
        return Err(format!(
            "counts: fast {c:?}, scalar {c64:?}, want {want_c:?}"
        ));
    }
    run_pair_miner(x, &want_pos, &want_neg, |twin, pos, neg| {
        if twin == "fast" {
            multi_similarity_mine(x, &labels, params, pos, neg, &mut ws)
        } else {
            scalar::multi_similarity_mine(x, &labels, params, pos, neg, &mut ws)
        }
    })
}

/// Op `multi_similarity`: over every pair, or over the pairs the multi-similarity miner
/// keeps (`mine_epsilon`); fast kernels and twins.
pub fn check_ms_loss(case: &Case<'_>) -> Result<(), String> {
    use triplet_kernels::{
        multi_similarity_loss, multi_similarity_loss_grad, multi_similarity_loss_pairs,
        multi_similarity_loss_pairs_grad, multi_similarity_loss_pairs_workspace_len,
        multi_similarity_loss_workspace_len, MultiSimilarityParams,
    };
    let xm: Mat = case.get("x")?;
    let x = xm.matrix()?;
    let labels: Vec<u32> = case.get("labels")?;
    if case.get::<String>("metric")? != "cosine" {
        return Err("multi_similarity is defined on cosine similarity".into());
    }
    let params = MultiSimilarityParams::new(
        case.get::<f64>("alpha")? as f32,
        case.get::<f64>("beta")? as f32,
        case.get::<f64>("base")? as f32,
    );
    let eps: Option<f64> = case.get_opt("mine_epsilon")?;
    let want_loss: f64 = case.get("expected.loss")?;
    let want_grad: Mat = case.get("expected.grad")?;
    let want_pos: usize = case.get("expected.num_pos_pairs")?;
    let want_neg: usize = case.get("expected.num_neg_pairs")?;
    let (n, d) = (x.rows(), x.dim());
    let mut grad = vec![f32::NAN; x.len()];
    match eps {
        None => {
            let b = (0..n)
                .flat_map(|a| (0..n).map(move |j| (a, j)))
                .filter(|&(a, j)| a != j)
                .fold((0, 0), |(p, q), (a, j)| {
                    if labels[a] == labels[j] {
                        (p + 1, q)
                    } else {
                        (p, q + 1)
                    }
                });
            if b != (want_pos, want_neg) {
                return Err(format!("pair counts {b:?}, want ({want_pos}, {want_neg})"));
            }
            let mut ws = vec![f32::NAN; multi_similarity_loss_workspace_len(n, d)];
            let loss = multi_similarity_loss(x, &labels, params, &mut ws).map_err(err)?;
            case.close("loss", f64::from(loss), want_loss)?;
            let loss =
                multi_similarity_loss_grad(x, &labels, params, &mut grad, &mut ws).map_err(err)?;
            case.close("loss (grad call)", f64::from(loss), want_loss)?;
            case.close_mat("grad", &grad, &want_grad, n, d)?;
            let mut ws = vec![f32::NAN; scalar::multi_similarity_loss_workspace_len(n, d)];
            let loss = scalar::multi_similarity_loss(x, &labels, params, &mut ws).map_err(err)?;
            case.close("scalar loss", f64::from(loss), want_loss)?;
            let loss = scalar::multi_similarity_loss_grad(x, &labels, params, &mut grad, &mut ws)
                .map_err(err)?;
            case.close("scalar loss (grad call)", f64::from(loss), want_loss)?;
            case.close_mat("scalar grad", &grad, &want_grad, n, d)
        }
        Some(eps) => {
            let miner = MultiSimilarityMinerParams::new(eps as f32);
            let mut ws = vec![f32::NAN; pair_mine_workspace_len(n, d)];
            let (mut pos, mut neg) = (vec![Pair::default(); n * n], vec![Pair::default(); n * n]);
            let c = multi_similarity_mine(x, &labels, miner, &mut pos, &mut neg, &mut ws)
                .map_err(err)?;
            if (c.positives, c.negatives) != (want_pos, want_neg) {
                return Err(format!("mined {c:?}, want ({want_pos}, {want_neg})"));
            }
            let (pos, neg) = (&pos[..c.positives], &neg[..c.negatives]);
            let k = pos.len() + neg.len();
            let mut ws = vec![f32::NAN; multi_similarity_loss_pairs_workspace_len(n, d, k)];
            let loss = multi_similarity_loss_pairs(x, pos, neg, params, &mut ws).map_err(err)?;
            case.close("loss", f64::from(loss), want_loss)?;
            let loss = multi_similarity_loss_pairs_grad(x, pos, neg, params, &mut grad, &mut ws)
                .map_err(err)?;
            case.close("loss (grad call)", f64::from(loss), want_loss)?;
            case.close_mat("grad", &grad, &want_grad, n, d)?;
            let mut ws = vec![f32::NAN; scalar::multi_similarity_loss_pairs_workspace_len(n, d, k)];
            let loss =
                scalar::multi_similarity_loss_pairs(x, pos, neg, params, &mut ws).map_err(err)?;
            case.close("scalar loss", f64::from(loss), want_loss)?;
            let loss =
                scalar::multi_similarity_loss_pairs_grad(x, pos, neg, params, &mut grad, &mut ws)
                    .map_err(err)?;
            case.close("scalar loss (grad call)", f64::from(loss), want_loss)?;
            case.close_mat("scalar grad", &grad, &want_grad, n, d)
        }
    }
}
