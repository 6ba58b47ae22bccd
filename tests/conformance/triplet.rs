//! Ops `triplet_margin` (explicit triplets) and `triplet_batch` (online mining in a
//! labelled batch). Every case is checked against the fast kernels and their scalar twins.

use crate::case::{Case, Mat, TripletIdx};
use serde::Deserialize;
use triplet_kernels::{
    mine_triplets, mine_triplets_count, mine_triplets_workspace_len, scalar, triplet_batch_loss,
    triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_batch_loss_workspace_len, triplet_margin_loss, triplet_margin_loss_grad,
    triplet_margin_loss_workspace_len, BatchLoss, BatchParams, Hinge, Mining, Reduction, Triplet,
    TripletParams,
};

fn err(e: triplet_kernels::Error) -> String {
    e.to_string()
}

/// The format's reductions of both triplet ops (`none`: explicit triplets only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReductionName {
    None,
    Sum,
    Mean,
    MeanNonzero,
}

/// The format's mining strategies.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MiningName {
    All,
    Hard,
    Semihard,
}

impl From<MiningName> for Mining {
    fn from(m: MiningName) -> Self {
        match m {
            MiningName::All => Mining::All,
            MiningName::Hard => Mining::BatchHard,
            MiningName::Semihard => Mining::SemiHard,
        }
    }
}

fn triplets(idx: Vec<TripletIdx>) -> Vec<Triplet> {
    idx.into_iter().map(|t| t.0).collect()
}

/// Op `triplet_margin`.
pub fn check_margin(case: &Case<'_>) -> Result<(), String> {
    let xm: Mat = case.get("x")?;
    let x = xm.matrix()?;
    let triplets = triplets(case.get("triplets")?);
    let reduction: ReductionName = case.get("reduction")?;
    let params = TripletParams::new()
        .with_metric(case.metric()?)
        .with_margin(case.get::<f64>("margin")? as f32)
        .with_swap(case.get("swap")?)
        .with_eps(case.get::<f64>("eps")? as f32)
        .with_reduction(match reduction {
            ReductionName::Mean => Reduction::Mean,
            // `none`: the terms, and the gradient of their sum.
            ReductionName::Sum | ReductionName::None => Reduction::Sum,
            ReductionName::MeanNonzero => {
                return Err("reduction `mean_nonzero` is not one of triplet_margin's".into())
            }
        });
    // The loss: the terms for `none`, a number otherwise.
    let (want_terms, want_loss) = if reduction == ReductionName::None {
        (Some(case.get::<Vec<f64>>("expected.loss")?), None)
    } else {
        (None, Some(case.get::<f64>("expected.loss")?))
    };
    let want_grad: Mat = case.get("expected.grad")?;
    let k = triplets.len();
    for twin in ["fast", "scalar"] {
        let mut terms = vec![f32::NAN; k];
        let mut grad = vec![f32::NAN; x.len()];
        let ws_len = if twin == "fast" {
            triplet_margin_loss_workspace_len(x.rows(), x.dim())
        } else {
            scalar::triplet_margin_loss_workspace_len(x.rows(), x.dim())
        };
        let mut ws = vec![f32::NAN; ws_len];
        let loss = if twin == "fast" {
            triplet_margin_loss_grad(x, &triplets, params, &mut terms, &mut grad, &mut ws)
        } else {
            scalar::triplet_margin_loss_grad(x, &triplets, params, &mut terms, &mut grad, &mut ws)
        }
        .map_err(err)?;
        // The forward-only entry point must agree with the fused one.
        let mut terms2 = vec![f32::NAN; k];
        let loss2 = if twin == "fast" {
            triplet_margin_loss(x, &triplets, params, &mut terms2, &mut ws)
        } else {
            scalar::triplet_margin_loss(x, &triplets, params, &mut terms2, &mut ws)
        }
        .map_err(err)?;
        if loss2.to_bits() != loss.to_bits() || terms2 != terms {
            return Err(format!("{twin}: forward and fused forward differ"));
        }
        if let Some(want) = &want_terms {
            case.close_all(&format!("{twin} terms"), &terms, want)?;
        }
        if let Some(want) = want_loss {
            case.close(&format!("{twin} loss"), f64::from(loss), want)?;
        }
        case.close_mat(
            &format!("{twin} grad"),
            &grad,
            &want_grad,
            x.rows(),
            x.dim(),
        )?;
    }
    Ok(())
}

/// The expectations of a `triplet_batch` case: either `finite: true` alone (only
/// finiteness is checked) or the loss and gradient, with optional counts and triplets.
struct BatchExpected {
    loss: f64,
    grad: Mat,
    num_triplets: Option<f64>,
    num_active: Option<f64>,
    triplets: Option<Vec<Triplet>>,
}

fn batch_expected(case: &Case<'_>) -> Result<Option<BatchExpected>, String> {
    match case.get_opt::<bool>("expected.finite")? {
        Some(true) => return Ok(None),
        Some(false) => return Err("`expected.finite` is false".into()),
        None => {}
    }
    Ok(Some(BatchExpected {
        loss: case.get("expected.loss")?,
        grad: case.get("expected.grad")?,
        num_triplets: case.get_opt("expected.num_triplets")?,
        num_active: case.get_opt("expected.num_active")?,
        triplets: case
            .get_opt::<Vec<TripletIdx>>("expected.triplets")?
            .map(triplets),
    }))
}

/// Op `triplet_batch`.
pub fn check_batch(case: &Case<'_>) -> Result<(), String> {
    let xm: Mat = case.get("x")?;
    let x = xm.matrix()?;
    let labels: Vec<u32> = case.get("labels")?;
    let mining = Mining::from(case.get::<MiningName>("mining")?);
    let params = BatchParams::new()
        .with_metric(case.metric()?)
        .with_mining(mining)
        .with_margin(case.get::<f64>("margin")? as f32)
        .with_hinge(if case.get("soft")? {
            Hinge::SoftPlus
        } else {
            Hinge::Relu
        })
        .with_reduction(match case.get::<ReductionName>("reduction")? {
            ReductionName::Mean => Reduction::Mean,
            ReductionName::Sum => Reduction::Sum,
            ReductionName::MeanNonzero => Reduction::MeanNonzero,
            ReductionName::None => {
                return Err("reduction `none` is not one of triplet_batch's".into())
            }
        });
    let (n, d) = (x.rows(), x.dim());
    let want = batch_expected(case)?;

    for twin in ["fast", "scalar"] {
        let mut grad = vec![f32::NAN; x.len()];
        let ws_len = if twin == "fast" {
            triplet_batch_loss_grad_workspace_len(n, d, params)
        } else {
            scalar::triplet_batch_loss_grad_workspace_len(n, d, params)
        };
        let mut ws = vec![f32::NAN; ws_len];
        let out: BatchLoss = if twin == "fast" {
            triplet_batch_loss_grad(x, &labels, params, &mut grad, &mut ws)
        } else {
            scalar::triplet_batch_loss_grad(x, &labels, params, &mut grad, &mut ws)
        }
        .map_err(err)?;
        let mut ws2 = vec![f32::NAN; triplet_batch_loss_workspace_len(n, d, params)];
        let fwd = if twin == "fast" {
            triplet_batch_loss(x, &labels, params, &mut ws2)
        } else {
            scalar::triplet_batch_loss(x, &labels, params, &mut ws2)
        }
        .map_err(err)?;
        if fwd != out {
            return Err(format!("{twin}: forward {fwd:?} and fused {out:?} differ"));
        }
        if !out.loss.is_finite() || grad.iter().any(|g| !g.is_finite()) {
            return Err(format!("{twin}: non-finite loss or gradient"));
        }
        let Some(want) = &want else {
            continue;
        };
        case.close(&format!("{twin} loss"), f64::from(out.loss), want.loss)?;
        case.close_mat(&format!("{twin} grad"), &grad, &want.grad, n, d)?;
        if let Some(num) = want.num_triplets {
            if out.num_triplets as f64 != num {
                return Err(format!(
                    "{twin} num_triplets: got {}, want {num}",
                    out.num_triplets
                ));
            }
            let count = if twin == "fast" {
                mine_triplets_count(&labels, mining)
            } else {
                scalar::mine_triplets_count(&labels, mining)
            }
            .map_err(err)?;
            if count != out.num_triplets {
                return Err(format!("{twin} mine_triplets_count: {count}"));
            }
        }
        if let Some(num) = want.num_active {
            if out.num_active as f64 != num {
                return Err(format!(
                    "{twin} num_active: got {}, want {num}",
                    out.num_active
                ));
            }
        }
        if let Some(want) = &want.triplets {
            let mut got = vec![Triplet::new(u32::MAX, u32::MAX, u32::MAX); want.len() + 1];
            let mut ws = vec![f32::NAN; mine_triplets_workspace_len(n, d)];
            let k = if twin == "fast" {
                mine_triplets(x, &labels, params.metric, mining, &mut got, &mut ws)
            } else {
                scalar::mine_triplets(x, &labels, params.metric, mining, &mut got, &mut ws)
            }
            .map_err(err)?;
            if got[..k] != want[..] {
                return Err(format!(
                    "{twin} triplets: got {:?}, want {want:?}",
                    &got[..k]
                ));
            }
        }
    }
    Ok(())
}

/// Op `triplet_batch_ref`: anchors `x` against the reference set `y`, both gradients,
/// the counts and the selected triplets, for the fast kernels and the twins; the forward
/// entry point and the accumulating form must agree with the fused one.
pub fn check_batch_ref(case: &Case<'_>) -> Result<(), String> {
    use triplet_kernels::{
        mine_triplets_ref, mine_triplets_ref_count, mine_triplets_ref_workspace_len,
        triplet_batch_ref_loss, triplet_batch_ref_loss_grad,
        triplet_batch_ref_loss_grad_workspace_len, triplet_batch_ref_loss_workspace_len, GradMode,
        RefGrad, RefSet, NO_INDEX,
    };
    let xm: Mat = case.get("x")?;
    let x = xm.matrix()?;
    let ym: Mat = case.get("y")?;
    let y = ym.matrix()?;
    let labels: Vec<u32> = case.get("labels")?;
    let y_labels: Vec<u32> = case.get("y_labels")?;
    let self_index: Option<Vec<u32>> = case.get_opt::<Vec<i64>>("self_index")?.map(|v| {
        v.into_iter()
            .map(|j| u32::try_from(j).unwrap_or(NO_INDEX))
            .collect()
    });
    let mining = Mining::from(case.get::<MiningName>("mining")?);
    let params = BatchParams::new()
        .with_metric(case.metric()?)
        .with_mining(mining)
        .with_margin(case.get::<f64>("margin")? as f32)
        .with_hinge(if case.get("soft")? {
            Hinge::SoftPlus
        } else {
            Hinge::Relu
        })
        .with_reduction(match case.get::<ReductionName>("reduction")? {
            ReductionName::Mean => Reduction::Mean,
            ReductionName::Sum => Reduction::Sum,
            ReductionName::MeanNonzero => Reduction::MeanNonzero,
            ReductionName::None => {
                return Err("reduction `none` is not one of triplet_batch_ref's".into())
            }
        });
    let want_loss: f64 = case.get("expected.loss")?;
    let want_grad: Mat = case.get("expected.grad")?;
    let want_grad_y: Mat = case.get("expected.grad_y")?;
    let want_triplets_n: f64 = case.get("expected.num_triplets")?;
    let want_active: f64 = case.get("expected.num_active")?;
    let want_triplets = case
        .get_opt::<Vec<TripletIdx>>("expected.triplets")?
        .map(triplets);
    let (n, m, d) = (x.rows(), y.rows(), x.dim());
    let mut refs = RefSet::new(y, &y_labels);
    if let Some(own) = self_index.as_deref() {
        refs = refs.with_self_index(own);
    }
    for twin in ["fast", "scalar"] {
        let fast = twin == "fast";
        let mut gx = vec![f32::NAN; x.len()];
        let mut gy = vec![f32::NAN; y.len()];
        let ws_len = if fast {
            triplet_batch_ref_loss_grad_workspace_len(n, m, d, params)
        } else {
            scalar::triplet_batch_ref_loss_grad_workspace_len(n, m, d, params)
        };
        let mut ws = vec![f32::NAN; ws_len];
        let grad = RefGrad::new(&mut gx).with_y(&mut gy);
        let out = if fast {
            triplet_batch_ref_loss_grad(x, &labels, refs, params, grad, &mut ws)
        } else {
            scalar::triplet_batch_ref_loss_grad(x, &labels, refs, params, grad, &mut ws)
        }
        .map_err(err)?;
        let mut ws2 = vec![f32::NAN; triplet_batch_ref_loss_workspace_len(n, m, d, params)];
        let fwd = if fast {
            triplet_batch_ref_loss(x, &labels, refs, params, &mut ws2)
        } else {
            scalar::triplet_batch_ref_loss(x, &labels, refs, params, &mut ws2)
        }
        .map_err(err)?;
        if fwd != out {
            return Err(format!("{twin}: forward {fwd:?} and fused {out:?} differ"));
        }
        case.close(&format!("{twin} loss"), f64::from(out.loss), want_loss)?;
        case.close_mat(&format!("{twin} grad"), &gx, &want_grad, n, d)?;
        case.close_mat(&format!("{twin} grad_y"), &gy, &want_grad_y, m, d)?;
        if out.num_triplets as f64 != want_triplets_n || out.num_active as f64 != want_active {
            return Err(format!(
                "{twin} counts: got {} / {}, want {want_triplets_n} / {want_active}",
                out.num_triplets, out.num_active
            ));
        }
        let count = if fast {
            mine_triplets_ref_count(&labels, &y_labels, self_index.as_deref(), mining)
        } else {
            scalar::mine_triplets_ref_count(&labels, &y_labels, self_index.as_deref(), mining)
        }
        .map_err(err)?;
        if count != out.num_triplets {
            return Err(format!("{twin} mine_triplets_ref_count: {count}"));
        }
        // Accumulating onto ones gives ones plus the same gradient.
        let mut ax = vec![1.0_f32; x.len()];
        let mut ay = vec![1.0_f32; y.len()];
        let grad = RefGrad::new(&mut ax)
            .with_y(&mut ay)
            .with_mode(GradMode::Accumulate);
        let acc = if fast {
            triplet_batch_ref_loss_grad(x, &labels, refs, params, grad, &mut ws)
        } else {
            scalar::triplet_batch_ref_loss_grad(x, &labels, refs, params, grad, &mut ws)
        }
        .map_err(err)?;
        if acc != out {
            return Err(format!(
                "{twin}: accumulate {acc:?} and overwrite {out:?} differ"
            ));
        }
        let shifted = |v: &[f32]| v.iter().map(|&g| g - 1.0).collect::<Vec<f32>>();
        case.close_mat(
            &format!("{twin} accumulated grad"),
            &shifted(&ax),
            &want_grad,
            n,
            d,
        )?;
        case.close_mat(
            &format!("{twin} accumulated grad_y"),
            &shifted(&ay),
            &want_grad_y,
            m,
            d,
        )?;
        if let Some(want) = &want_triplets {
            let mut got = vec![Triplet::new(u32::MAX, u32::MAX, u32::MAX); want.len() + 1];
            let mut ws = vec![f32::NAN; mine_triplets_ref_workspace_len(n, m, d)];
            let k = if fast {
                mine_triplets_ref(x, &labels, refs, params.metric, mining, &mut got, &mut ws)
            } else {
                scalar::mine_triplets_ref(
                    x,
                    &labels,
                    refs,
                    params.metric,
                    mining,
                    &mut got,
                    &mut ws,
                )
            }
            .map_err(err)?;
            if got[..k] != want[..] {
                return Err(format!(
                    "{twin} triplets: got {:?}, want {want:?}",
                    &got[..k]
                ));
            }
        }
    }
    Ok(())
}
