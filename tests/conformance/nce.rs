//! Ops `ntxent` (within one batch, or queries `x` against documents `y`) and `supcon`:
//! loss and every gradient, fast kernel and scalar twin.

use crate::case::{Case, Mat};
use triplet_kernels::{
    infonce_loss, infonce_loss_grad, infonce_loss_workspace_len, ntxent_loss, ntxent_loss_grad,
    ntxent_loss_workspace_len, scalar, supcon_loss, supcon_loss_grad, NtXentParams, SupConParams,
};

pub fn check_ntxent(case: &Case<'_>) -> Result<(), String> {
    let xm: Mat = case.get("x")?;
    let labels: Vec<u32> = case.get("labels")?;
    let t = case.get::<f64>("temperature")? as f32;
    let params = NtXentParams::new(t);
    let want: f64 = case.get("expected.loss")?;
    let want_grad: Mat = case.get("expected.grad")?;
    let x = xm.matrix()?;
    let (n, d) = (x.rows(), x.dim());
    let err = |e: triplet_kernels::Error| e.to_string();
    let ym: Option<Mat> = case.get_opt("y")?;
    let Some(ym) = ym else {
        let ws_len = ntxent_loss_workspace_len(n, d).max(scalar::ntxent_loss_workspace_len(n, d));
        let mut ws = vec![f32::NAN; ws_len];
        let out = ntxent_loss(x, &labels, params, &mut ws).map_err(err)?;
        case.close("loss", f64::from(out.loss), want)?;
        let out = scalar::ntxent_loss(x, &labels, params, &mut ws).map_err(err)?;
        case.close("scalar loss", f64::from(out.loss), want)?;
        for who in ["fast", "scalar"] {
            let mut g = vec![f32::NAN; x.len()];
            ws.fill(f32::NAN);
            let out = if who == "fast" {
                ntxent_loss_grad(x, &labels, params, &mut g, &mut ws)
            } else {
                scalar::ntxent_loss_grad(x, &labels, params, &mut g, &mut ws)
            }
            .map_err(err)?;
            case.close(&format!("{who} loss"), f64::from(out.loss), want)?;
            case.close_mat(&format!("{who} grad"), &g, &want_grad, n, d)?;
        }
        return Ok(());
    };
    let y_labels: Vec<u32> = case.get("y_labels")?;
    let want_gy: Mat = case.get("expected.grad_y")?;
    let y = ym.matrix()?;
    let m = y.rows();
    let ws_len =
        infonce_loss_workspace_len(n, m, d).max(scalar::infonce_loss_workspace_len(n, m, d));
    let mut ws = vec![f32::NAN; ws_len];
    let out = infonce_loss(x, &labels, y, &y_labels, params, &mut ws).map_err(err)?;
    case.close("loss", f64::from(out.loss), want)?;
    let out = scalar::infonce_loss(x, &labels, y, &y_labels, params, &mut ws).map_err(err)?;
    case.close("scalar loss", f64::from(out.loss), want)?;
    for who in ["fast", "scalar"] {
        let mut g = vec![f32::NAN; x.len()];
        let mut gy = vec![f32::NAN; y.len()];
        ws.fill(f32::NAN);
        let out = if who == "fast" {
            infonce_loss_grad(x, &labels, y, &y_labels, params, &mut g, &mut gy, &mut ws)
        } else {
            scalar::infonce_loss_grad(x, &labels, y, &y_labels, params, &mut g, &mut gy, &mut ws)
        }
        .map_err(err)?;
        case.close(&format!("{who} loss"), f64::from(out.loss), want)?;
        case.close_mat(&format!("{who} grad"), &g, &want_grad, n, d)?;
        case.close_mat(&format!("{who} grad_y"), &gy, &want_gy, m, d)?;
    }
    Ok(())
}

pub fn check_supcon(case: &Case<'_>) -> Result<(), String> {
    let xm: Mat = case.get("x")?;
    let labels: Vec<u32> = case.get("labels")?;
    let params = SupConParams::new(case.get::<f64>("temperature")? as f32);
    let want: f64 = case.get("expected.loss")?;
    let want_grad: Mat = case.get("expected.grad")?;
    let want_active: usize = case.get("expected.num_active")?;
    let x = xm.matrix()?;
    let (n, d) = (x.rows(), x.dim());
    let err = |e: triplet_kernels::Error| e.to_string();
    let ws_len = ntxent_loss_workspace_len(n, d).max(scalar::supcon_loss_workspace_len(n, d));
    let mut ws = vec![f32::NAN; ws_len];
    let out = supcon_loss(x, &labels, params, &mut ws).map_err(err)?;
    case.close("loss", f64::from(out.loss), want)?;
    for who in ["fast", "scalar"] {
        let mut g = vec![f32::NAN; x.len()];
        ws.fill(f32::NAN);
        let out = if who == "fast" {
            supcon_loss_grad(x, &labels, params, &mut g, &mut ws)
        } else {
            scalar::supcon_loss_grad(x, &labels, params, &mut g, &mut ws)
        }
        .map_err(err)?;
        case.close(&format!("{who} loss"), f64::from(out.loss), want)?;
        if out.num_terms != want_active {
            return Err(format!(
                "{who} num_active: got {}, want {want_active}",
                out.num_terms
            ));
        }
        case.close_mat(&format!("{who} grad"), &g, &want_grad, n, d)?;
    }
    Ok(())
}
