//! Op `quadruplet`: explicit (a, p, n1, n2) quadruplets.

use crate::case::{Case, Mat, QuadrupletIdx};
use serde::Deserialize;
use triplet_kernels::{
    quadruplet_loss, quadruplet_loss_grad, quadruplet_loss_workspace_len, scalar, Quadruplet,
    QuadrupletParams, Reduction,
};

/// The format's quadruplet reductions.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReductionName {
    Mean,
    Sum,
}

pub fn check(case: &Case<'_>) -> Result<(), String> {
    let metric = case.metric()?;
    let xm: Mat = case.get("x")?;
    let x = xm.matrix()?;
    let labels: Vec<u32> = case.get("labels")?;
    let quads: Vec<Quadruplet> = case
        .get::<Vec<QuadrupletIdx>>("quadruplets")?
        .into_iter()
        .map(|q| q.0)
        .collect();
    // The kernel takes the quadruplets as given; the labels only document their roles.
    let label = |i: u32| labels.get(i as usize).copied().ok_or("index out of range");
    for q in &quads {
        let (la, lp) = (label(q.anchor)?, label(q.positive)?);
        let (l1, l2) = (label(q.negative1)?, label(q.negative2)?);
        if la != lp || l1 == la || l2 == la || l2 == l1 {
            return Err(format!("quadruplet {q:?} does not match the labels"));
        }
    }
    let reduction = match case.get::<ReductionName>("reduction")? {
        ReductionName::Mean => Reduction::Mean,
        ReductionName::Sum => Reduction::Sum,
    };
    let params = QuadrupletParams::new(
        case.get::<f64>("margin1")? as f32,
        case.get::<f64>("margin2")? as f32,
    )
    .with_reduction(reduction);
    let want_loss: f64 = case.get("expected.loss")?;
    let want_grad: Mat = case.get("expected.grad")?;

    let mut ws = vec![f32::NAN; quadruplet_loss_workspace_len(x.rows(), x.dim())];
    let loss = quadruplet_loss(x, &quads, metric, params, &mut ws).map_err(|e| e.to_string())?;
    case.close("loss", f64::from(loss), want_loss)?;
    let mut grad = vec![f32::NAN; x.len()];
    let loss = quadruplet_loss_grad(x, &quads, metric, params, &mut grad, &mut ws)
        .map_err(|e| e.to_string())?;
    case.close("loss (grad call)", f64::from(loss), want_loss)?;
    case.close_mat("grad", &grad, &want_grad, xm.rows, xm.cols)?;
    let mut ws = vec![f32::NAN; scalar::quadruplet_loss_workspace_len(x.rows(), x.dim())];
    let loss = scalar::quadruplet_loss_grad(x, &quads, metric, params, &mut grad, &mut ws)
        .map_err(|e| e.to_string())?;
    case.close("scalar loss", f64::from(loss), want_loss)?;
    case.close_mat("scalar grad", &grad, &want_grad, xm.rows, xm.cols)
}
