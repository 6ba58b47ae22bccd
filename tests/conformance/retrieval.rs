//! Op `retrieval`: precision@1, R-precision and MAP@R of queries against a labelled
//! reference set (`y`, `y_labels`), or leave-one-out against themselves (no `y`).

use crate::case::{Case, Mat};
use triplet_kernels::{retrieval_metrics, retrieval_metrics_workspace_len, scalar};

pub fn check(case: &Case<'_>) -> Result<(), String> {
    let metric = case.metric()?;
    let xm: Mat = case.get("x")?;
    let x = xm.matrix()?;
    let labels: Vec<u32> = case.get("labels")?;
    let want_p1: f64 = case.get("expected.precision_at_1")?;
    let want_rp: f64 = case.get("expected.r_precision")?;
    let want_map: f64 = case.get("expected.mean_average_precision_at_r")?;

    // The reference set and its labels come together.
    let ym = case.get_opt::<Mat>("y")?;
    let y_labels: Vec<u32> = match ym {
        Some(_) => case.get("y_labels")?,
        None => Vec::new(),
    };
    let y = ym.as_ref().map(Mat::matrix).transpose()?;
    let m = y.map_or(x.rows(), |y| y.rows());
    let reference = y.map(|y| (y, &y_labels[..]));

    let mut ws = vec![
        f32::NAN;
        retrieval_metrics_workspace_len(x.rows(), m, x.dim()).max(
            scalar::retrieval_metrics_workspace_len(x.rows(), m, x.dim())
        )
    ];
    // recall@1 is precision@1: checked against the same expectation.
    let fast =
        retrieval_metrics(x, &labels, reference, metric, 1, &mut ws).map_err(|e| e.to_string())?;
    let twin = scalar::retrieval_metrics(x, &labels, reference, metric, 1, &mut ws)
        .map_err(|e| e.to_string())?;
    for (who, got) in [("fast", fast), ("scalar", twin)] {
        case.close(
            &format!("{who} precision_at_1"),
            got.precision_at_1,
            want_p1,
        )?;
        case.close(&format!("{who} recall_at_1"), got.recall_at_k, want_p1)?;
        case.close(&format!("{who} r_precision"), got.r_precision, want_rp)?;
        case.close(
            &format!("{who} mean_average_precision_at_r"),
            got.mean_average_precision_at_r,
            want_map,
        )?;
    }
    Ok(())
}
