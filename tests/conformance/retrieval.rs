//! Op `retrieval`: precision@1, R-precision and MAP@R of queries against a labelled
//! reference set (`y`, `y_labels`), or leave-one-out against themselves (no `y`).

use crate::case::Case;
use triplet_kernels::{retrieval_metrics, retrieval_metrics_workspace_len, scalar, Matrix};

pub fn check(case: &Case<'_>) -> Result<(), String> {
    let metric = case.metric()?;
    let xm = case.mat("x")?;
    let xd = xm.f32();
    let x = Matrix::new(&xd, xm.rows, xm.cols).map_err(|e| e.to_string())?;
    let labels = case.u32s("labels")?;
    let want_p1 = case.f64("expected.precision_at_1")?;
    let want_rp = case.f64("expected.r_precision")?;
    let want_map = case.f64("expected.mean_average_precision_at_r")?;

    let (yd, y_labels, m) = if case.has("y") {
        let ym = case.mat("y")?;
        (ym.f32(), case.u32s("y_labels")?, ym.rows)
    } else {
        (Vec::new(), Vec::new(), x.rows())
    };
    let y = if case.has("y") {
        Some(Matrix::new(&yd, m, x.dim()).map_err(|e| e.to_string())?)
    } else {
        None
    };
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
