//! Op `contrastive`: all ordered pairs of a labelled batch.

use crate::case::{Case, Mat};
use serde::Deserialize;
use triplet_kernels::{
    contrastive_loss, contrastive_loss_grad, contrastive_loss_workspace_len, scalar,
    ContrastiveParams, ContrastiveReduction,
};

/// The format's contrastive reductions.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReductionName {
    MeanNonzeroPerPart,
    MeanPerPart,
    Mean,
    Sum,
}

impl From<ReductionName> for ContrastiveReduction {
    fn from(r: ReductionName) -> Self {
        match r {
            ReductionName::MeanNonzeroPerPart => ContrastiveReduction::MeanNonzeroPerPart,
            ReductionName::MeanPerPart => ContrastiveReduction::MeanPerPart,
            ReductionName::Mean => ContrastiveReduction::Mean,
            ReductionName::Sum => ContrastiveReduction::Sum,
        }
    }
}

pub fn check(case: &Case<'_>) -> Result<(), String> {
    let metric = case.metric()?;
    let xm: Mat = case.get("x")?;
    let x = xm.matrix()?;
    let labels: Vec<u32> = case.get("labels")?;
    let reduction: ReductionName = case.get("reduction")?;
    let params = ContrastiveParams::new(
        case.get::<f64>("pos_margin")? as f32,
        case.get::<f64>("neg_margin")? as f32,
    )
    .with_reduction(reduction.into());
    let want_loss: f64 = case.get("expected.loss")?;
    let want_grad: Mat = case.get("expected.grad")?;

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
