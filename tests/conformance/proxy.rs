//! Ops `proxy_nca` and `proxy_anchor`: caller-held proxies, gradients with respect to the
//! embeddings and the proxies.

use crate::case::{Case, Mat};
use triplet_kernels::{
    proxy_anchor_loss, proxy_anchor_loss_grad, proxy_anchor_loss_workspace_len, proxy_nca_loss,
    proxy_nca_loss_grad, proxy_nca_loss_workspace_len, scalar, Error, Matrix, ProxyAnchorParams,
    ProxyNcaParams,
};

/// The inputs and expectations shared by both proxy ops.
struct Inputs {
    xm: Mat,
    pm: Mat,
    labels: Vec<u32>,
    loss: f64,
    grad: Mat,
    grad_proxies: Mat,
}

fn inputs(case: &Case<'_>) -> Result<Inputs, String> {
    Ok(Inputs {
        xm: case.get("x")?,
        pm: case.get("proxies")?,
        labels: case.get("labels")?,
        loss: case.get("expected.loss")?,
        grad: case.get("expected.grad")?,
        grad_proxies: case.get("expected.grad_proxies")?,
    })
}

/// A loss-only and a loss-and-gradients kernel of one proxy op.
type LossFn = dyn Fn(Matrix<'_>, &[u32], Matrix<'_>, &mut [f32]) -> Result<f32, Error>;
type GradFn = dyn Fn(
    Matrix<'_>,
    &[u32],
    Matrix<'_>,
    &mut [f32],
    &mut [f32],
    &mut [f32],
) -> Result<f32, Error>;

fn run(
    case: &Case<'_>,
    inp: &Inputs,
    ws_len: usize,
    loss_fn: &LossFn,
    grads: [(&str, &GradFn); 2],
) -> Result<(), String> {
    let x = inp.xm.matrix()?;
    let p = inp.pm.matrix()?;
    let mut ws = vec![f32::NAN; ws_len];
    let loss = loss_fn(x, &inp.labels, p, &mut ws).map_err(|e| e.to_string())?;
    case.close("loss", f64::from(loss), inp.loss)?;
    for (who, grad_fn) in grads {
        let mut g = vec![f32::NAN; x.len()];
        let mut gp = vec![f32::NAN; p.len()];
        ws.fill(f32::NAN);
        let loss =
            grad_fn(x, &inp.labels, p, &mut g, &mut gp, &mut ws).map_err(|e| e.to_string())?;
        case.close(&format!("{who} loss"), f64::from(loss), inp.loss)?;
        case.close_mat(&format!("{who} grad"), &g, &inp.grad, x.rows(), x.dim())?;
        case.close_mat(
            &format!("{who} grad_proxies"),
            &gp,
            &inp.grad_proxies,
            p.rows(),
            p.dim(),
        )?;
    }
    Ok(())
}

pub fn check_nca(case: &Case<'_>) -> Result<(), String> {
    let inp = inputs(case)?;
    let params = ProxyNcaParams::new(case.get::<f64>("softmax_scale")? as f32);
    let (n, c, d) = (inp.xm.rows, inp.pm.rows, inp.xm.cols);
    let ws_len =
        proxy_nca_loss_workspace_len(n, c, d).max(scalar::proxy_nca_loss_workspace_len(n, c, d));
    run(
        case,
        &inp,
        ws_len,
        &move |x, l, p, ws| proxy_nca_loss(x, l, p, params, ws),
        [
            ("fast", &move |x, l, p, g, gp, ws| {
                proxy_nca_loss_grad(x, l, p, params, g, gp, ws)
            }),
            ("scalar", &move |x, l, p, g, gp, ws| {
                scalar::proxy_nca_loss_grad(x, l, p, params, g, gp, ws)
            }),
        ],
    )
}

pub fn check_anchor(case: &Case<'_>) -> Result<(), String> {
    let inp = inputs(case)?;
    let params = ProxyAnchorParams::new(
        case.get::<f64>("margin")? as f32,
        case.get::<f64>("alpha")? as f32,
    );
    let (n, c, d) = (inp.xm.rows, inp.pm.rows, inp.xm.cols);
    let ws_len = proxy_anchor_loss_workspace_len(n, c, d)
        .max(scalar::proxy_anchor_loss_workspace_len(n, c, d));
    run(
        case,
        &inp,
        ws_len,
        &move |x, l, p, ws| proxy_anchor_loss(x, l, p, params, ws),
        [
            ("fast", &move |x, l, p, g, gp, ws| {
                proxy_anchor_loss_grad(x, l, p, params, g, gp, ws)
            }),
            ("scalar", &move |x, l, p, g, gp, ws| {
                scalar::proxy_anchor_loss_grad(x, l, p, params, g, gp, ws)
            }),
        ],
    )
}
