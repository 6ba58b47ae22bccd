//! Op `quadruplet`: explicit (a, p, n1, n2) quadruplets.

use crate::case::Case;
use triplet_kernels::{
    quadruplet_loss, quadruplet_loss_grad, quadruplet_loss_workspace_len, scalar, Matrix,
    Quadruplet, QuadrupletParams, Reduction,
};

pub fn check(case: &Case<'_>) -> Result<(), String> {
    let metric = case.metric()?;
    let xm = case.mat("x")?;
    let xd = xm.f32();
    let x = Matrix::new(&xd, xm.rows, xm.cols).map_err(|e| e.to_string())?;
    let labels = case.u32s("labels")?;
    let quads: Vec<Quadruplet> = case
        .tuples::<4>("quadruplets")?
        .into_iter()
        .map(Quadruplet::from)
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
    let reduction = match case.str("reduction")? {
        "mean" => Reduction::Mean,
        "sum" => Reduction::Sum,
        other => return Err(format!("unknown reduction `{other}`")),
    };
    let params = QuadrupletParams::new(case.f64("margin1")? as f32, case.f64("margin2")? as f32)
        .with_reduction(reduction);
    let want_loss = case.f64("expected.loss")?;
    let want_grad = case.mat("expected.grad")?;

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
