//! Op `distance_matrix`: pairwise (no `y`) or cross distance matrices.

use crate::case::{Case, Mat};
use triplet_kernels::{
    cross_distances, cross_distances_workspace_len, pairwise_distances,
    pairwise_distances_workspace_len,
};

pub fn check(case: &Case<'_>) -> Result<(), String> {
    let metric = case.metric()?;
    let xm: Mat = case.get("x")?;
    let x = xm.matrix()?;
    // `expected` is itself the matrix.
    let want = case.expected_matrix()?;
    if let Some(ym) = case.get_opt::<Mat>("y")? {
        let y = ym.matrix()?;
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
