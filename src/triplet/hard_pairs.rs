//! The batch-hard loss over given choices ([`triplet_hardest_pairs_loss`],
//! [`triplet_hardest_pairs_loss_grad`]): the last step of a batch-hard loss whose sweep
//! was split over workers ([`crate::hardest_pairs_part`], [`crate::merge_hardest_pairs`]).

use super::{check_batch_args_params, finish_grad, per_triplet, BatchLoss, BatchParams};
use crate::distance::metric_norms;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::mining::{HardestPair, Mining, NO_INDEX};
use crate::simd::Backend;
use crate::validate::{check_len, check_rows, check_workspace};

/// Workspace elements that [`triplet_hardest_pairs_loss`] and
/// [`triplet_hardest_pairs_loss_grad`] need for `rows` embeddings of dimension `dim`:
/// `rows` (the rows' norms). Saturates instead of overflowing.
pub const fn triplet_hardest_pairs_loss_workspace_len(rows: usize, dim: usize) -> usize {
    let _ = dim;
    rows
}

/// The checks of the hardest-pairs losses and their scalar twins, in their documented
/// order: parameters, `pairs`, `grad`, workspace, indices, data. Returns the number of
/// rows.
pub(crate) fn check_hardest_pairs_args(
    x: &Matrix<'_>,
    pairs: &[HardestPair],
    params: &BatchParams,
    grad_len: Option<usize>,
    workspace_len: usize,
) -> Result<usize, Error> {
    check_batch_args_params(params)?;
    if params.mining != Mining::BatchHard {
        return Err(Error::InvalidParameter {
            name: "mining",
            expected: "Mining::BatchHard",
        });
    }
    if params.normalize {
        return Err(Error::InvalidParameter {
            name: "normalize",
            expected: "false (normalise x before the sweep)",
        });
    }
    let n = x.rows();
    check_len("pairs", n, pairs.len())?;
    if let Some(g) = grad_len {
        check_len("grad", x.len(), g)?;
    }
    check_workspace(
        triplet_hardest_pairs_loss_workspace_len(n, x.dim()),
        workspace_len,
    )?;
    for (a, c) in pairs.iter().enumerate() {
        for i in [c.positive, c.negative] {
            if i != NO_INDEX && i as usize >= n {
                return Err(Error::IndexOutOfRange {
                    buffer: "pairs",
                    position: a,
                    index: i as usize,
                    bound: n,
                });
            }
        }
    }
    check_rows(x, false)?;
    Ok(n)
}

/// The shared body of the two entry points; `grad` is `None` for the forward pass.
#[inline(always)]
fn pairs_impl(
    x: Matrix<'_>,
    pairs: &[HardestPair],
    params: &BatchParams,
    mut grad: Option<&mut [f32]>,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    let grad_len = grad.as_deref().map(<[f32]>::len);
    let n = check_hardest_pairs_args(&x, pairs, params, grad_len, workspace.len())?;
    let backend = Backend::active();
    let actual = workspace.len();
    let norms = workspace.get_mut(..n).ok_or(Error::WorkspaceTooSmall {
        required: n,
        actual,
    })?;
    metric_norms(backend, &x, params.metric, norms);
    if let Some(g) = grad.as_deref_mut() {
        g.fill(0.0);
    }
    let totals = per_triplet::pairs_totals(backend, x, pairs, norms, params, grad.as_deref_mut());
    let (loss, w) = totals.finish(params.reduction);
    if let Some(g) = grad {
        finish_grad(backend, w, g);
    }
    Ok(loss)
}

/// The batch-hard triplet loss of given choices: for every anchor `a` whose
/// `pairs[a]` names both a positive `p` and a negative `q`, the term
/// `h(d(a, p) - d(a, q) + margin)` with both distances recomputed directly, reduced by
/// `params.reduction` over those terms, exactly as [`crate::triplet_batch_loss`] does after
/// its sweep. Fed the merged choices of [`crate::hardest_pairs_part`], it returns the same
/// [`BatchLoss`] as [`crate::triplet_batch_loss`] with [`Mining::BatchHard`], bit for bit.
/// The pairs are taken as given (their labels are not rechecked; their distances are not
/// read). Scalar twin: [`crate::scalar::triplet_hardest_pairs_loss`]. `workspace` needs
/// [`triplet_hardest_pairs_loss_workspace_len`]`(rows, dim)` elements.
///
/// `params.mining` must be [`Mining::BatchHard`] and `params.normalize` false: a split
/// sweep runs on rows the caller has normalised (with [`crate::l2_normalize`], chaining the
/// gradient through [`crate::l2_normalize_backward`]).
///
/// # Errors
///
/// - [`Error::InvalidParameter`] (`"margin"`, `"mining"`, `"normalize"`) for a margin that
///   is NaN or above `2^100` in magnitude, another mining, or `normalize: true`;
/// - [`Error::LengthMismatch`] (`"pairs"`) when `pairs.len() != rows`;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::IndexOutOfRange`] (`"pairs"`, position = the anchor) for an index that is
///   neither below `rows` nor [`NO_INDEX`];
/// - [`Error::NonFinite`] and [`Error::TooLarge`] (`"x"`) as for
///   [`crate::triplet_batch_loss`].
///
/// # Numerics
///
/// Those of [`crate::triplet_batch_loss`]'s batch-hard terms.
///
/// # Example
///
/// ```
/// use triplet_kernels::{triplet_hardest_pairs_loss, triplet_hardest_pairs_loss_workspace_len};
/// use triplet_kernels::{BatchParams, HardestPair, Matrix, Metric, Mining, Reduction};
/// let x = Matrix::new(&[0.0, 1.0, 1.5, 4.0], 4, 1)?;
/// const P: BatchParams = BatchParams::new()
///     .with_metric(Metric::Euclidean)
///     .with_mining(Mining::BatchHard)
///     .with_margin(1.0)
///     .with_reduction(Reduction::Sum);
/// let pick = |p, q| HardestPair { positive: p, negative: q, ..HardestPair::NONE };
/// // Anchor 3 has no choice: it adds no term.
/// let pairs = [pick(1, 2), pick(0, 2), pick(3, 1), HardestPair::NONE];
/// let mut ws = [0.0_f32; triplet_hardest_pairs_loss_workspace_len(4, 1)];
/// let out = triplet_hardest_pairs_loss(x, &pairs, P, &mut ws)?;
/// // max(1 - 1.5 + 1, 0) = 0.5, max(1 - 0.5 + 1, 0) = 1.5, max(2.5 - 0.5 + 1, 0) = 3.
/// assert_eq!((out.num_triplets, out.loss), (3, 0.5 + 1.5 + 3.0));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_hardest_pairs_loss(
    x: Matrix<'_>,
    pairs: &[HardestPair],
    params: BatchParams,
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    pairs_impl(x, pairs, &params, None, workspace)
}

/// [`triplet_hardest_pairs_loss`] and its gradient with respect to `x` (`rows * dim`,
/// every element overwritten), as [`crate::triplet_batch_loss_grad`] forms it for its
/// batch-hard triplets: bit for bit the same gradient when `pairs` are the merged choices
/// of [`crate::hardest_pairs_part`] over `x`.
///
/// This is the step a multi-threaded batch-hard loss ends with: threads sweep their
/// [`crate::SweepPart`]s, the choices are merged, and one call (`O(rows * dim)`, a few
/// hundredths of the sweep) forms the loss and the gradient. Scalar twin:
/// [`crate::scalar::triplet_hardest_pairs_loss_grad`].
///
/// # Errors
///
/// Those of [`triplet_hardest_pairs_loss`], and [`Error::LengthMismatch`] (`"grad"`) when
/// `grad.len() != rows * dim` (checked after `pairs`).
///
/// # Numerics
///
/// Those of [`crate::triplet_batch_loss_grad`]'s batch-hard gradient.
///
/// # Example
///
/// ```
/// use triplet_kernels::{hardest_pairs_part, hardest_pairs_part_workspace_len};
/// use triplet_kernels::{merge_hardest_pairs, triplet_hardest_pairs_loss_grad};
/// use triplet_kernels::{triplet_batch_loss_grad, triplet_batch_loss_grad_workspace_len};
/// use triplet_kernels::{triplet_hardest_pairs_loss_workspace_len, BatchParams, HardestPair};
/// use triplet_kernels::{Matrix, Metric, Mining, SweepPart};
/// let data: Vec<f32> = (0..600).map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0).collect();
/// let x = Matrix::new(&data, 300, 2)?; // two tiles of rows: three tiles in the sweep
/// let labels: Vec<u32> = (0..300).map(|i| i % 7).collect();
/// const P: BatchParams = BatchParams::new().with_metric(Metric::Euclidean).with_margin(0.2);
/// // Two workers (threads in practice), each with its own choices and workspace.
/// let mut parts = vec![vec![HardestPair::NONE; 300]; 2];
/// let mut ws = vec![0.0_f32; hardest_pairs_part_workspace_len(300, 2)];
/// for (i, out) in parts.iter_mut().enumerate() {
///     hardest_pairs_part(x, &labels, P.metric, SweepPart::new(i, 2), out, &mut ws)?;
/// }
/// let (head, tail) = parts.split_at_mut(1);
/// merge_hardest_pairs(&mut head[0], &tail[0])?;
/// let mut grad = vec![0.0_f32; 600];
/// let mut ws1 = vec![0.0_f32; triplet_hardest_pairs_loss_workspace_len(300, 2)];
/// let split = triplet_hardest_pairs_loss_grad(x, &head[0], P, &mut grad, &mut ws1)?;
/// // The same loss and gradient as the whole batch-hard call, bit for bit.
/// let mut whole_grad = vec![0.0_f32; 600];
/// let mut ws2 = vec![0.0_f32; triplet_batch_loss_grad_workspace_len(300, 2, P)];
/// let whole = triplet_batch_loss_grad(x, &labels, P, &mut whole_grad, &mut ws2)?;
/// assert_eq!(split, whole);
/// assert_eq!(grad, whole_grad);
/// # let _ = Mining::BatchHard;
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn triplet_hardest_pairs_loss_grad(
    x: Matrix<'_>,
    pairs: &[HardestPair],
    params: BatchParams,
    grad: &mut [f32],
    workspace: &mut [f32],
) -> Result<BatchLoss, Error> {
    pairs_impl(x, pairs, &params, Some(grad), workspace)
}
