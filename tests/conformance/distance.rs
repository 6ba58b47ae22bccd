//! Op `distance_matrix`: pairwise (no `y`) or cross distance matrices.

use crate::case::Case;
use triplet_kernels::{
    cross_distances, cross_distances_workspace_len, pairwise_distances,
    pairwise_distances_workspace_len, Matrix,
};

pub fn check(case: &Case<'_>) -> Result<(), String> {
    let metric = case.metric()?;
    let xm = case.mat("x")?;
    let xd = xm.f32();
    let x = Matrix::new(&xd, xm.rows, xm.cols).map_err(|e| e.to_string())?;
    let want = case.mat("expected")?;
    // `expected` is itself the matrix: its rows/cols/data are read by `mat`.
    for k in ["rows", "cols", "data"] {
        let _ = case.value(&format!("expected.{k}"));
    }
    if case.has("y") {
        let ym = case.mat("y")?;
        let yd = ym.f32();
        let y = Matrix::new(&yd, ym.rows, ym.cols).map_err(|e| e.to_string())?;
        let mut out = vec![f32::NAN; x.rows() * y.rows()];
        let mut ws = vec![f32::NAN; cross_distances_workspace_len(x.rows(), y.rows(), x.dim())];
        cross_distances(x, y, metric, &mut out, &mut ws).map_err(|e| e.to_string())?;
        case.close_mat("distance", &out, &want, x.rows(), y.rows())
    } else {
        let mut out = vec![f32::NAN; x.rows() * x.rows()];
        let mut ws = vec![f32::NAN; pairwise_distances_workspace_len(x.rows(), x.dim())];
        pairwise_distances(x, metric, &mut out, &mut ws).map_err(|e| e.to_string())?;
        case.close_mat("distance", &out, &want, x.rows(), x.rows())
    }
}
