//! Ops `triplet_margin` (explicit triplets) and `triplet_batch` (online mining in a
//! labelled batch). Every case is checked against the fast kernels and their scalar twins.

use crate::case::{Case, Mat};
use triplet_kernels::{
    mine_triplets, mine_triplets_count, mine_triplets_workspace_len, scalar, triplet_batch_loss,
    triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len,
    triplet_batch_loss_workspace_len, triplet_margin_loss, triplet_margin_loss_grad,
    triplet_margin_loss_workspace_len, BatchLoss, BatchParams, Hinge, Matrix, Mining, Reduction,
    Triplet, TripletParams,
};

fn err(e: triplet_kernels::Error) -> String {
    e.to_string()
}

/// Reads `expected.grad`, a matrix (its rows/cols/data are read by `mat`).
fn expected_grad(case: &Case<'_>) -> Result<Mat, String> {
    case.mat("expected.grad")
}

/// Op `triplet_margin`.
pub fn check_margin(case: &Case<'_>) -> Result<(), String> {
    let xm = case.mat("x")?;
    let xd = xm.f32();
    let x = Matrix::new(&xd, xm.rows, xm.cols).map_err(err)?;
    let triplets: Vec<Triplet> = case
        .tuples::<3>("triplets")?
        .into_iter()
        .map(|[a, p, n]| Triplet::new(a, p, n))
        .collect();
    let reduction = case.str("reduction")?;
    let params = TripletParams::new()
        .with_metric(case.metric()?)
        .with_margin(case.f64("margin")? as f32)
        .with_swap(case.bool("swap")?)
        .with_eps(case.f64("eps")? as f32)
        .with_reduction(match reduction {
            "mean" => Reduction::Mean,
            // `none`: the terms, and the gradient of their sum.
            "sum" | "none" => Reduction::Sum,
            other => return Err(format!("unknown reduction `{other}`")),
        });
    let want_grad = expected_grad(case)?;
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
        if reduction == "none" {
            let want = case.f64s("expected.loss")?;
            case.close_all(&format!("{twin} terms"), &terms, &want)?;
        } else {
            case.close(
                &format!("{twin} loss"),
                f64::from(loss),
                case.f64("expected.loss")?,
            )?;
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

/// Op `triplet_batch`.
pub fn check_batch(case: &Case<'_>) -> Result<(), String> {
    let xm = case.mat("x")?;
    let xd = xm.f32();
    let x = Matrix::new(&xd, xm.rows, xm.cols).map_err(err)?;
    let labels = case.u32s("labels")?;
    let mining = match case.str("mining")? {
        "all" => Mining::All,
        "hard" => Mining::BatchHard,
        "semihard" => Mining::SemiHard,
        other => return Err(format!("unknown mining `{other}`")),
    };
    let params = BatchParams::new()
        .with_metric(case.metric()?)
        .with_mining(mining)
        .with_margin(case.f64("margin")? as f32)
        .with_hinge(if case.bool("soft")? {
            Hinge::SoftPlus
        } else {
            Hinge::Relu
        })
        .with_reduction(match case.str("reduction")? {
            "mean" => Reduction::Mean,
            "sum" => Reduction::Sum,
            "mean_nonzero" => Reduction::MeanNonzero,
            other => return Err(format!("unknown reduction `{other}`")),
        });
    let (n, d) = (x.rows(), x.dim());
    let finite_only = case.has("expected.finite");
    if finite_only && !case.bool("expected.finite")? {
        return Err("`expected.finite` is false".into());
    }

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
        if finite_only {
            continue;
        }
        case.close(
            &format!("{twin} loss"),
            f64::from(out.loss),
            case.f64("expected.loss")?,
        )?;
        case.close_mat(&format!("{twin} grad"), &grad, &expected_grad(case)?, n, d)?;
        if case.has("expected.num_triplets") {
            let want = case.f64("expected.num_triplets")?;
            if out.num_triplets as f64 != want {
                return Err(format!(
                    "{twin} num_triplets: got {}, want {want}",
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
        if case.has("expected.num_active") {
            let want = case.f64("expected.num_active")?;
            if out.num_active as f64 != want {
                return Err(format!(
                    "{twin} num_active: got {}, want {want}",
                    out.num_active
                ));
            }
        }
        if case.has("expected.triplets") {
            let want: Vec<Triplet> = case
                .tuples::<3>("expected.triplets")?
                .into_iter()
                .map(|[a, p, n]| Triplet::new(a, p, n))
                .collect();
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
