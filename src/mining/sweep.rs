//! The row sweep of the threshold miners: every anchor's distance row, block by block
//! ([`for_row_blocks`], Gram form with the accuracy fix-up), handed to a visitor with one
//! row of scratch. No `n x n` matrix is held.

use super::rows::{block_rows, for_row_blocks};
use crate::distance::{metric_norms, Metric};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::Backend;
use crate::workspace::Carve;

/// Calls `visit(a, row, scratch)` for every anchor `a` in ascending order, `row` holding
/// `d(x_a, x_j)` for every `j` and `scratch` `n` elements of garbage, until `visit`
/// returns `false`. `workspace` holds at least [`super::rows_len`]`(n, dim, 0)` elements.
pub(crate) fn sweep_rows<F>(
    backend: Backend,
    x: &Matrix<'_>,
    metric: Metric,
    workspace: &mut [f32],
    mut visit: F,
) -> Result<(), Error>
where
    F: FnMut(usize, &[f32], &mut [f32]) -> bool,
{
    let n = x.rows();
    let mut ws = Carve::new(workspace);
    let norms = ws.take(n)?;
    metric_norms(backend, x, metric, norms);
    let scratch = ws.take(n)?;
    let block = ws.take(block_rows(n) * n)?;
    let norms = &*norms;
    let pack = ws.rest();
    let mut go = true;
    for_row_blocks(backend, x, metric, norms, block, pack, |i0, _, blk| {
        if !go || n == 0 {
            return Ok(());
        }
        for (r, row) in blk.chunks_exact(n).enumerate() {
            if !visit(i0 + r, row, &mut *scratch) {
                go = false;
                break;
            }
        }
        Ok(())
    })
}
