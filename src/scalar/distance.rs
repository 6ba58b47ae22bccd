//! Scalar twins of [`crate::distance`].

use crate::distance::{
    check_cross, check_cross_rows, check_pairwise, check_pairwise_rows, mirror_upper, DistanceMode,
    Metric, NORM_EPS,
};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::scalar::acc::Acc64;
use crate::validate::check_len;
use core::ops::Range;

pub(crate) fn sq_dist64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = f64::from(x) - f64::from(y);
            d * d
        })
        .sum()
}

pub(crate) fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

pub(crate) fn norm64(a: &[f32]) -> f64 {
    libm::sqrt(dot64(a, a))
}

fn clamp64(n: f64) -> f64 {
    if n < f64::from(NORM_EPS) {
        f64::from(NORM_EPS)
    } else {
        n
    }
}

/// `d(a, a)` by the formula: 0, except for a cosine row whose norm is clamped, where it is
/// `1 - |a|^2 / 1e-24` (1 for a zero row).
fn self_distance64(metric: Metric, a: &[f32]) -> f64 {
    let eps = f64::from(NORM_EPS);
    match metric {
        Metric::Cosine if norm64(a) < eps => 1.0 - dot64(a, a) / (eps * eps),
        _ => 0.0,
    }
}

/// The distance between two rows in `f64`.
pub(crate) fn distance64(metric: Metric, a: &[f32], b: &[f32]) -> f64 {
    match metric {
        Metric::SquaredEuclidean => sq_dist64(a, b),
        Metric::Euclidean => libm::sqrt(sq_dist64(a, b)),
        Metric::Cosine => 1.0 - dot64(a, b) / (clamp64(norm64(a)) * clamp64(norm64(b))),
    }
}

/// Scalar twin of [`crate::pairwise_distances`].
///
/// # Errors
///
/// Exactly those of [`crate::pairwise_distances`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, pairwise_distances_workspace_len, Matrix, Metric};
/// let x = Matrix::new(&[0.0, 0.0, 3.0, 4.0], 2, 2)?;
/// let mut out = [0.0_f32; 4];
/// let mut ws = [0.0_f32; pairwise_distances_workspace_len(2, 2)];
/// scalar::pairwise_distances(x, Metric::SquaredEuclidean, &mut out, &mut ws)?;
/// assert_eq!(out, [0.0, 25.0, 25.0, 0.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn pairwise_distances(
    x: Matrix<'_>,
    metric: Metric,
    out: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let n = check_pairwise(&x, out.len(), workspace.len())?;
    for (i, (a, out_row)) in x.row_iter().zip(out.chunks_exact_mut(n)).enumerate() {
        for (j, (b, o)) in x.row_iter().zip(out_row.iter_mut()).enumerate() {
            if j > i {
                *o = distance64(metric, a, b) as f32;
            } else if j == i {
                *o = self_distance64(metric, a) as f32;
            }
        }
    }
    mirror_upper(out, n);
    Ok(())
}

/// Scalar twin of [`crate::cross_distances`].
///
/// # Errors
///
/// Exactly those of [`crate::cross_distances`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, cross_distances_workspace_len, Matrix, Metric};
/// let x = Matrix::new(&[1.0, 0.0], 1, 2)?;
/// let y = Matrix::new(&[0.0, 1.0], 1, 2)?;
/// let mut out = [0.0_f32; 1];
/// let mut ws = [0.0_f32; cross_distances_workspace_len(1, 1, 2)];
/// scalar::cross_distances(x, y, Metric::Cosine, &mut out, &mut ws)?;
/// assert_eq!(out, [1.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn cross_distances(
    x: Matrix<'_>,
    y: Matrix<'_>,
    metric: Metric,
    out: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (_, n) = check_cross(&x, &y, out.len(), workspace.len())?;
    for (a, out_row) in x.row_iter().zip(out.chunks_exact_mut(n)) {
        for (b, o) in y.row_iter().zip(out_row.iter_mut()) {
            *o = distance64(metric, a, b) as f32;
        }
    }
    Ok(())
}

/// Scalar twin of [`crate::pairwise_distances_rows`]: the exact distances (`mode` only
/// changes how the fast kernel evaluates them), the diagonal by the formula.
///
/// # Errors
///
/// Exactly those of [`crate::pairwise_distances_rows`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, pairwise_distances_rows_workspace_len, DistanceMode, Matrix, Metric};
/// let x = Matrix::new(&[0.0, 0.0, 3.0, 4.0], 2, 2)?;
/// let mut out = [0.0_f32; 2];
/// let mut ws = [0.0_f32; pairwise_distances_rows_workspace_len(2, 1, 2)];
/// scalar::pairwise_distances_rows(x, 1..2, Metric::Euclidean, DistanceMode::Gram, &mut out, &mut ws)?;
/// assert_eq!(out, [5.0, 0.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn pairwise_distances_rows(
    x: Matrix<'_>,
    rows: Range<usize>,
    metric: Metric,
    mode: DistanceMode,
    out_block: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let _ = mode;
    let (r0, r1) = check_pairwise_rows(&x, &rows, out_block.len(), workspace.len())?;
    let n = x.rows();
    if r0 == r1 {
        return Ok(());
    }
    for ((i, a), out_row) in x
        .row_iter()
        .enumerate()
        .skip(r0)
        .zip(out_block.chunks_exact_mut(n))
    {
        for (j, (b, o)) in x.row_iter().zip(out_row.iter_mut()).enumerate() {
            // Symmetric by construction: the pair is always evaluated in (min, max) order.
            *o = match i.cmp(&j) {
                core::cmp::Ordering::Less => distance64(metric, a, b) as f32,
                core::cmp::Ordering::Equal => self_distance64(metric, a) as f32,
                core::cmp::Ordering::Greater => distance64(metric, b, a) as f32,
            };
        }
    }
    Ok(())
}

/// Scalar twin of [`crate::cross_distances_rows`]: the exact distances (`mode` only
/// changes how the fast kernel evaluates them).
///
/// # Errors
///
/// Exactly those of [`crate::cross_distances_rows`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, cross_distances_rows_workspace_len, DistanceMode, Matrix, Metric};
/// let x = Matrix::new(&[1.0, 0.0, 0.0, 3.0], 2, 2)?;
/// let y = Matrix::new(&[0.0, 0.0], 1, 2)?;
/// let mut out = [0.0_f32; 1];
/// let mut ws = [0.0_f32; cross_distances_rows_workspace_len(1, 1, 2)];
/// scalar::cross_distances_rows(x, y, 1..2, Metric::Euclidean, DistanceMode::Direct, &mut out, &mut ws)?;
/// assert_eq!(out, [3.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn cross_distances_rows(
    x: Matrix<'_>,
    y: Matrix<'_>,
    rows: Range<usize>,
    metric: Metric,
    mode: DistanceMode,
    out_block: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let _ = mode;
    let (r0, r1) = check_cross_rows(&x, &y, &rows, out_block.len(), workspace.len())?;
    let n = y.rows();
    for (a, out_row) in x
        .row_iter()
        .skip(r0)
        .take(r1 - r0)
        .zip(out_block.chunks_exact_mut(n))
    {
        for (b, o) in y.row_iter().zip(out_row.iter_mut()) {
            *o = distance64(metric, a, b) as f32;
        }
    }
    Ok(())
}

/// Scalar twin of [`crate::row_norms`].
///
/// # Errors
///
/// Exactly those of [`crate::row_norms`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix};
/// let mut out = [0.0_f32; 1];
/// scalar::row_norms(Matrix::new(&[3.0, 4.0], 1, 2)?, &mut out)?;
/// assert_eq!(out, [5.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn row_norms(x: Matrix<'_>, out: &mut [f32]) -> Result<(), Error> {
    check_len("out", x.rows(), out.len())?;
    for (row, o) in x.row_iter().zip(out.iter_mut()) {
        *o = norm64(row) as f32;
    }
    Ok(())
}

/// Scalar twin of [`crate::l2_normalize`].
///
/// # Errors
///
/// Exactly those of [`crate::l2_normalize`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix};
/// let mut out = [0.0_f32; 2];
/// scalar::l2_normalize(Matrix::new(&[0.0, -2.0], 1, 2)?, &mut out)?;
/// assert_eq!(out, [0.0, -1.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn l2_normalize(x: Matrix<'_>, out: &mut [f32]) -> Result<(), Error> {
    check_len("out", x.len(), out.len())?;
    for (row, o) in x.row_iter().zip(out.chunks_exact_mut(x.dim())) {
        let r = clamp64(norm64(row));
        for (v, o) in row.iter().zip(o.iter_mut()) {
            *o = (f64::from(*v) / r) as f32;
        }
    }
    Ok(())
}

/// Scalar twin of [`crate::l2_normalize_backward`].
///
/// # Errors
///
/// Exactly those of [`crate::l2_normalize_backward`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix};
/// let mut gx = [0.0_f32; 2];
/// scalar::l2_normalize_backward(Matrix::new(&[2.0, 0.0], 1, 2)?, &[0.0, 1.0], &mut gx)?;
/// assert_eq!(gx, [0.0, 0.5]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn l2_normalize_backward(
    x: Matrix<'_>,
    grad_out: &[f32],
    grad_x: &mut [f32],
) -> Result<(), Error> {
    check_len("grad_out", x.len(), grad_out.len())?;
    check_len("grad_x", x.len(), grad_x.len())?;
    let dim = x.dim();
    for ((row, g), gx) in x
        .row_iter()
        .zip(grad_out.chunks_exact(dim))
        .zip(grad_x.chunks_exact_mut(dim))
    {
        let r = norm64(row);
        if r.is_nan() || r > f64::from(NORM_EPS) {
            let xg = dot64(row, g);
            for ((xv, gv), o) in row.iter().zip(g).zip(gx.iter_mut()) {
                *o = ((f64::from(*gv) - f64::from(*xv) * xg / (r * r)) / r) as f32;
            }
        } else {
            for (gv, o) in g.iter().zip(gx.iter_mut()) {
                *o = (f64::from(*gv) / f64::from(NORM_EPS)) as f32;
            }
        }
    }
    Ok(())
}

/// Clamped `f64` norm of a row (cosine only).
pub(crate) fn clamped_norm64(a: &[f32]) -> f64 {
    clamp64(norm64(a))
}

/// The twin of the fast kernels' one pair gradient (`distance::pair_grad_with`): adds
/// `coef * d d(a, b) / d a` to row `i` of `acc` and `coef * d d(a, b) / d b` to row `j`,
/// every contribution formed and summed in `f64`; `dist = d(a, b)` in `f64`, with
/// PyTorch's shift `eps` of the difference vector (Euclidean metrics only, 0 elsewhere).
/// Nothing when `i == j` (the distance of a row to itself is constant) or `coef == 0`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pair_grad64(
    metric: Metric,
    (i, a): (usize, &[f32]),
    (j, b): (usize, &[f32]),
    dist: f64,
    eps: f64,
    coef: f64,
    acc: &mut Acc64<'_>,
) {
    if coef == 0.0 || i == j {
        return;
    }
    if eps == 0.0 {
        add_distance_grad64(metric, a, b, dist, coef, acc, i);
        add_distance_grad64(metric, b, a, dist, coef, acc, j);
        return;
    }
    // d d/d a = k (a - b + eps), d d/d b = -k (a - b + eps).
    let k = match metric {
        Metric::SquaredEuclidean => 2.0 * coef,
        Metric::Euclidean if dist > 0.0 => coef / dist,
        _ => return,
    };
    let diff = || {
        a.iter()
            .zip(b)
            .map(move |(&u, &v)| k * (f64::from(u) - f64::from(v) + eps))
    };
    acc.add_row(i, a.len(), diff());
    acc.add_row(j, a.len(), diff().map(|t| -t));
}

/// Adds `coef * d d(a, b) / d a` to row `row` of `acc`, every contribution formed and
/// summed in `f64`. `dist = d(a, b)` in `f64`: one side of [`pair_grad64`], written out
/// per element (the proxy twins call it for a row and a proxy held in two accumulators).
pub(crate) fn add_distance_grad64(
    metric: Metric,
    a: &[f32],
    b: &[f32],
    dist: f64,
    coef: f64,
    acc: &mut Acc64<'_>,
    row: usize,
) {
    let dim = a.len();
    let pairs = a.iter().zip(b).map(|(&x, &y)| (f64::from(x), f64::from(y)));
    match metric {
        Metric::SquaredEuclidean => {
            acc.add_row(row, dim, pairs.map(|(x, y)| 2.0 * coef * (x - y)));
        }
        Metric::Euclidean => {
            if dist > 0.0 {
                acc.add_row(row, dim, pairs.map(|(x, y)| coef * (x - y) / dist));
            }
        }
        Metric::Cosine => {
            let na = clamped_norm64(a);
            let nb = clamped_norm64(b);
            let own = if na > f64::from(NORM_EPS) {
                (1.0 - dist) / (na * na)
            } else {
                0.0
            };
            acc.add_row(
                row,
                dim,
                pairs.map(|(x, y)| coef * (-y / (na * nb) + own * x)),
            );
        }
    }
}

/// Replaces the gradient `g` with respect to the normalised row `x / max(|x|, 1e-12)`
/// held in row `row` of `acc` by the gradient with respect to `x`, in `f64`: the formula
/// of [`l2_normalize_backward`], `(g - x <x, g> / |x|^2) / |x|`, or `g / 1e-12` where the
/// clamp is active.
pub(crate) fn normalize_backward64(x: &[f32], acc: &mut Acc64<'_>, row: usize) {
    let dim = x.len();
    let start = row.saturating_mul(dim);
    let at = |e: usize| start.saturating_add(e);
    let r = norm64(x);
    if r.is_nan() || r > f64::from(NORM_EPS) {
        let xg: f64 = x
            .iter()
            .enumerate()
            .map(|(e, &v)| f64::from(v) * acc.get(at(e)))
            .sum();
        for (e, &v) in x.iter().enumerate() {
            let g = acc.get(at(e));
            acc.set(at(e), (g - f64::from(v) * xg / (r * r)) / r);
        }
    } else {
        for e in 0..dim {
            let g = acc.get(at(e));
            acc.set(at(e), g / f64::from(NORM_EPS));
        }
    }
}
