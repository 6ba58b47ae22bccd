//! Ops `arcface` and `cosface`: class weights given as `proxies`, gradients with respect
//! to the embeddings and the weights, fast kernel and scalar twin.

use crate::case::{Case, Mat};
use triplet_kernels::{
    arcface_loss, arcface_loss_grad, arcface_loss_workspace_len, cosface_loss, cosface_loss_grad,
    scalar, ArcFaceParams, CosFaceParams, Error, Matrix,
};

type LossFn = dyn Fn(Matrix<'_>, &[u32], Matrix<'_>, &mut [f32]) -> Result<f32, Error>;
type GradFn = dyn Fn(
    Matrix<'_>,
    &[u32],
    Matrix<'_>,
    &mut [f32],
    &mut [f32],
    &mut [f32],
) -> Result<f32, Error>;

fn run(case: &Case<'_>, loss_fn: &LossFn, grads: [(&str, &GradFn); 2]) -> Result<(), String> {
    let xm: Mat = case.get("x")?;
    let pm: Mat = case.get("proxies")?;
    let labels: Vec<u32> = case.get("labels")?;
    let classes: usize = case.get("num_classes")?;
    if classes != pm.rows {
        return Err(format!("num_classes {classes} != proxies rows {}", pm.rows));
    }
    let want: f64 = case.get("expected.loss")?;
    let want_grad: Mat = case.get("expected.grad")?;
    let want_gp: Mat = case.get("expected.grad_proxies")?;
    let (x, p) = (xm.matrix()?, pm.matrix()?);
    let (n, c, d) = (x.rows(), p.rows(), x.dim());
    let ws_len =
        arcface_loss_workspace_len(n, c, d).max(scalar::arcface_loss_workspace_len(n, c, d));
    let mut ws = vec![f32::NAN; ws_len];
    let loss = loss_fn(x, &labels, p, &mut ws).map_err(|e| e.to_string())?;
    case.close("loss", f64::from(loss), want)?;
    for (who, grad_fn) in grads {
        let mut g = vec![f32::NAN; x.len()];
        let mut gp = vec![f32::NAN; p.len()];
        ws.fill(f32::NAN);
        let loss = grad_fn(x, &labels, p, &mut g, &mut gp, &mut ws).map_err(|e| e.to_string())?;
        case.close(&format!("{who} loss"), f64::from(loss), want)?;
        case.close_mat(&format!("{who} grad"), &g, &want_grad, n, d)?;
        case.close_mat(&format!("{who} grad_proxies"), &gp, &want_gp, c, d)?;
    }
    Ok(())
}

pub fn check_arcface(case: &Case<'_>) -> Result<(), String> {
    let params = ArcFaceParams::new(
        case.get::<f64>("margin_degrees")? as f32,
        case.get::<f64>("scale")? as f32,
    );
    run(
        case,
        &move |x, l, p, ws| arcface_loss(x, l, p, params, ws),
        [
            ("fast", &move |x, l, p, g, gp, ws| {
                arcface_loss_grad(x, l, p, params, g, gp, ws)
            }),
            ("scalar", &move |x, l, p, g, gp, ws| {
                scalar::arcface_loss_grad(x, l, p, params, g, gp, ws)
            }),
        ],
    )
}

pub fn check_cosface(case: &Case<'_>) -> Result<(), String> {
    let params = CosFaceParams::new(
        case.get::<f64>("margin")? as f32,
        case.get::<f64>("scale")? as f32,
    );
    run(
        case,
        &move |x, l, p, ws| cosface_loss(x, l, p, params, ws),
        [
            ("fast", &move |x, l, p, g, gp, ws| {
                cosface_loss_grad(x, l, p, params, g, gp, ws)
            }),
            ("scalar", &move |x, l, p, g, gp, ws| {
                scalar::cosface_loss_grad(x, l, p, params, g, gp, ws)
            }),
        ],
    )
}
