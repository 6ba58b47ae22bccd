//! Op `contrastive`: all ordered pairs of a labelled batch.

use crate::case::Case;
use triplet_kernels::{
    contrastive_loss, contrastive_loss_grad, contrastive_loss_workspace_len, scalar,
    ContrastiveParams, ContrastiveReduction, Matrix,
};

pub fn check(case: &Case<'_>) -> Result<(), String> {
    let metric = case.metric()?;
    let xm = case.mat("x")?;
    let xd = xm.f32();
    let x = Matrix::new(&xd, xm.rows, xm.cols).map_err(|e| e.to_string())?;
    let labels = case.u32s("labels")?;
    let reduction = match case.str("reduction")? {
        "mean_nonzero_per_part" => ContrastiveReduction::MeanNonzeroPerPart,
        "mean_per_part" => ContrastiveReduction::MeanPerPart,
        "mean" => ContrastiveReduction::Mean,
        "sum" => ContrastiveReduction::Sum,
        other => return Err(format!("unknown reduction `{other}`")),
    };
    let params = ContrastiveParams::new(
        case.f64("pos_margin")? as f32,
        case.f64("neg_margin")? as f32,
    )
    .with_reduction(reduction);
    let want_loss = case.f64("expected.loss")?;
    let want_grad = case.mat("expected.grad")?;

    let mut ws = vec![f32::NAN; contrastive_loss_workspace_len(x.rows(), x.dim())];
    let loss = contrastive_loss(x, &labels, metric, params, &mut ws).map_err(|e| e.to_string())?;
    case.close("loss", f64::from(loss), want_loss)?;
    let mut grad = vec![f32::NAN; x.len()];
    let loss = contrastive_loss_grad(x, &labels, metric, params, &mut grad, &mut ws)
        .map_err(|e| e.to_string())?;
    case.close("loss (grad call)", f64::from(loss), want_loss)?;
    case.close_mat("grad", &grad, &want_grad, xm.rows, xm.cols)?;
    // The reference twin must agree with the same vectors.
    let mut ws = vec![f32::NAN; scalar::contrastive_loss_workspace_len(x.rows(), x.dim())];
    let loss = scalar::contrastive_loss_grad(x, &labels, metric, params, &mut grad, &mut ws)
        .map_err(|e| e.to_string())?;
    case.close("scalar loss", f64::from(loss), want_loss)?;
    case.close_mat("scalar grad", &grad, &want_grad, xm.rows, xm.cols)
}
