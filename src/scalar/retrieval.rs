//! Scalar twins of [`crate::retrieval`]: every distance in `f64`, every query ranked by a
//! heap sort of all its references (stopped once the places the result reads are settled).

use core::cmp::Ordering;

use super::distance::{distance64, dot64};
use crate::distance::Metric;
use crate::error::Error;
use crate::matrix::Matrix;
use crate::retrieval::{
    check_knn, check_metrics, largest, ranking_metric, scalar_len, Cutoffs, Gallery,
    RetrievalMetrics, SearchMetric, Shape,
};

/// Workspace elements that the twin [`knn`] needs for `queries` queries against
/// `references` references of dimension `dim`: `4 references + 1`, one `f64` distance and
/// index per reference (plus one element to reach `f64` alignment). For leave-one-out
/// retrieval pass `references = queries`. Saturates instead of overflowing.
pub const fn knn_workspace_len(queries: usize, references: usize, dim: usize) -> usize {
    let _ = (queries, dim);
    scalar_len(references)
}

/// Workspace elements that the twins [`retrieval_metrics`] and [`retrieval_metrics_at`]
/// need: as [`knn_workspace_len`], `4 references + 1`. Saturates instead of overflowing.
pub const fn retrieval_metrics_workspace_len(
    queries: usize,
    references: usize,
    dim: usize,
) -> usize {
    let _ = (queries, dim);
    scalar_len(references)
}

/// Ranking of two `[distance, index]` pairs: smaller distance first, NaN after every
/// number, equal distances (and NaN against NaN) by smaller index.
fn rank(x: &[f64; 2], y: &[f64; 2]) -> Ordering {
    let ([dx, ix], [dy, iy]) = (*x, *y);
    let by_index = ix.total_cmp(&iy);
    match (dx.is_nan(), dy.is_nan()) {
        (false, false) => dx
            .partial_cmp(&dy)
            .unwrap_or(Ordering::Equal)
            .then(by_index),
        (false, true) => Ordering::Less,
        (true, false) => Ordering::Greater,
        (true, true) => by_index,
    }
}

/// Moves the entry at heap node `pos` down a min-heap (by [`rank`]) of `size` nodes.
///
/// The heap is stored mirrored: node `i` lives at `pairs[pairs.len() - 1 - i]`, so the root
/// is the last element and the heap shrinks away from the front.
fn sift_down(pairs: &mut [[f64; 2]], mut pos: usize, size: usize) {
    let last = pairs.len().wrapping_sub(1);
    let Some(&item) = pairs.get(last.wrapping_sub(pos)) else {
        return;
    };
    loop {
        // `pos < size <= pairs.len()`, so `2 * pos + 2` cannot overflow.
        let left = 2 * pos + 1;
        if left >= size {
            break;
        }
        let Some(&l) = pairs.get(last.wrapping_sub(left)) else {
            break;
        };
        let (mut child, mut least) = (left, l);
        if left + 1 < size {
            if let Some(&r) = pairs.get(last.wrapping_sub(left + 1)) {
                if rank(&r, &l) == Ordering::Less {
                    (child, least) = (left + 1, r);
                }
            }
        }
        if rank(&least, &item) != Ordering::Less {
            break;
        }
        if let Some(p) = pairs.get_mut(last.wrapping_sub(pos)) {
            *p = least;
        }
        pos = child;
    }
    if let Some(p) = pairs.get_mut(last.wrapping_sub(pos)) {
        *p = item;
    }
}

/// Puts the `need` least entries of `pairs` by [`rank`], in order, in `pairs[..need]`
/// (sorts all of them when `need >= pairs.len()`); the rest is left in unspecified order.
///
/// A heap sort on a mirrored min-heap (see [`sift_down`]): each extracted minimum lands
/// at the front, after the previous one, and the sort stops once `need` are out. `rank`
/// is a strict total order on pairs with distinct indices, so the result is the unique
/// sorted prefix, whatever the algorithm. Written with checked accesses only: the slice
/// sorts of `core` keep a panic path for inconsistent comparators.
fn sort_prefix(pairs: &mut [[f64; 2]], need: usize) {
    let len = pairs.len();
    for pos in (0..len / 2).rev() {
        sift_down(pairs, pos, len);
    }
    let mut size = len;
    while size > 1 && len - size < need {
        // Swap the root (the least entry left) with the heap's last node, next to the
        // settled prefix.
        if let Some((front, back)) = pairs.split_at_mut_checked(len - size + 1) {
            if let (Some(next), Some(root)) = (front.last_mut(), back.last_mut()) {
                core::mem::swap(next, root);
            }
        }
        size -= 1;
        sift_down(pairs, 0, size);
    }
}

/// Every reference that query `q` (row `a`) can retrieve, as `[f64 distance, index]`, in
/// the `f64`-aligned part of the workspace, the `need` nearest first and in order (see
/// [`sort_prefix`]). Euclidean ranks by the squared distance (the exact same order), as
/// the fast kernel does.
fn ranked<'w>(
    metric: Option<Metric>,
    shape: &Shape<'_>,
    a: &[f32],
    q: usize,
    need: usize,
    workspace: &'w mut [f32],
) -> &'w [[f64; 2]] {
    let (_, pairs, _) = bytemuck::pod_align_to_mut::<f32, [f64; 2]>(workspace);
    let mut len = 0;
    for (j, b) in shape.refs.row_iter().enumerate() {
        if shape.leave_one_out && j == q {
            continue;
        }
        if let Some(p) = pairs.get_mut(len) {
            let d = match metric {
                Some(metric) => distance64(ranking_metric(metric), a, b),
                None => -dot64(a, b),
            };
            *p = [d, j as f64];
            len += 1;
        }
    }
    let pairs = pairs.get_mut(..len).unwrap_or_default();
    sort_prefix(pairs, need);
    pairs.get(..need).unwrap_or(pairs)
}

/// Scalar twin of [`crate::knn`]: for each query, the `f64` distance to every reference,
/// a heap sort by (distance, index) of all of them, stopped once the first `k` are in
/// place, and those `k` kept (distances rounded to `f32`; Euclidean sorted by the squared
/// distance, then rooted).
///
/// # Errors
///
/// Those of [`crate::knn`], except that the workspace must hold [`knn_workspace_len`]
/// elements (the twin's own requirement, reported by [`Error::WorkspaceTooSmall`]).
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, Metric};
/// let q = Matrix::new(&[0.0, 0.0], 1, 2)?;
/// let y = Matrix::new(&[3.0, 4.0, 1.0, 0.0, 0.0, -1.0], 3, 2)?;
/// let (mut idx, mut dist) = ([0_u32; 2], [0.0_f32; 2]);
/// let mut ws = [0.0_f32; scalar::knn_workspace_len(1, 3, 2)];
/// scalar::knn(q, Some(y), Metric::SquaredEuclidean, 2, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!(idx, [1, 2]); // equal distances: the smaller index first
/// assert_eq!(dist, [1.0, 1.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn knn(
    queries: Matrix<'_>,
    reference: Option<Matrix<'_>>,
    metric: Metric,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let shape = check_knn(
        &queries,
        reference,
        k,
        indices.len(),
        distances.len(),
        workspace.len(),
        true,
    )?;
    for (q, (a, (i_row, d_row))) in queries
        .row_iter()
        .zip(
            indices
                .chunks_exact_mut(k)
                .zip(distances.chunks_exact_mut(k)),
        )
        .enumerate()
    {
        let pairs = ranked(Some(metric), &shape, a, q, k, workspace);
        for ((&[d, j], i), o) in pairs.iter().zip(i_row.iter_mut()).zip(d_row.iter_mut()) {
            *i = j as u32;
            *o = if metric == Metric::Euclidean {
                libm::sqrt(d) as f32
            } else {
                d as f32
            };
        }
    }
    Ok(())
}

/// Workspace elements that the twin [`knn_gallery`] needs: as [`knn_workspace_len`],
/// `4 references + 1`. Saturates instead of overflowing.
pub const fn knn_gallery_workspace_len(queries: usize, references: usize, dim: usize) -> usize {
    knn_workspace_len(queries, references, dim)
}

/// Scalar twin of [`crate::knn_gallery`]: as the twin [`knn`] against the gallery's rows
/// under its metric, in `f64` (the prepared norms are not read: the twin computes its
/// own), and `-<a, b>` in `f64` for [`SearchMetric::InnerProduct`].
///
/// # Errors
///
/// Those of [`crate::knn_gallery`], except that the workspace must hold
/// [`knn_gallery_workspace_len`] elements.
///
/// # Example
///
/// ```
/// use triplet_kernels::{prepare_gallery, scalar, Matrix, SearchMetric};
/// let mut norms = [0.0_f32; 2];
/// let g = prepare_gallery(Matrix::new(&[1.0, 0.0, 3.0, 0.0], 2, 2)?, SearchMetric::InnerProduct, &mut norms)?;
/// let (mut idx, mut dist) = ([0_u32; 1], [0.0_f32; 1]);
/// let mut ws = [0.0_f32; scalar::knn_gallery_workspace_len(1, 2, 2)];
/// scalar::knn_gallery(Matrix::new(&[1.0, 1.0], 1, 2)?, &g, 1, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!((idx, dist), ([1], [-3.0]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn knn_gallery(
    queries: Matrix<'_>,
    gallery: &Gallery<'_>,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let metric = match gallery.metric() {
        SearchMetric::SquaredEuclidean => Some(Metric::SquaredEuclidean),
        SearchMetric::Euclidean => Some(Metric::Euclidean),
        SearchMetric::Cosine => Some(Metric::Cosine),
        _ => None,
    };
    if let Some(metric) = metric {
        return knn(
            queries,
            Some(gallery.rows()),
            metric,
            k,
            indices,
            distances,
            workspace,
        );
    }
    let shape = check_knn(
        &queries,
        Some(gallery.rows()),
        k,
        indices.len(),
        distances.len(),
        workspace.len(),
        true,
    )?;
    for (q, (a, (i_row, d_row))) in queries
        .row_iter()
        .zip(
            indices
                .chunks_exact_mut(k)
                .zip(distances.chunks_exact_mut(k)),
        )
        .enumerate()
    {
        let pairs = ranked(None, &shape, a, q, k, workspace);
        for ((&[d, j], i), o) in pairs.iter().zip(i_row.iter_mut()).zip(d_row.iter_mut()) {
            *i = j as u32;
            *o = d as f32;
        }
    }
    Ok(())
}

/// Scalar twin of [`crate::retrieval_metrics`]: for each query with `R >= 1`, an `f64`
/// ranking of all its references (as [`knn`], down to place `max(R, K)`), then the
/// textbook formulas of [`RetrievalMetrics`], averaged in query order.
///
/// # Errors
///
/// Those of [`crate::retrieval_metrics`], except that the workspace must hold
/// [`retrieval_metrics_workspace_len`] elements (the twin's own requirement, reported by
/// [`Error::WorkspaceTooSmall`]).
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, Metric};
/// // Query label 1's nearest reference has label 2, its second nearest label 1.
/// let q = Matrix::new(&[0.0], 1, 1)?;
/// let y = Matrix::new(&[1.0, 2.0, 9.0], 3, 1)?;
/// let mut ws = [0.0_f32; scalar::retrieval_metrics_workspace_len(1, 3, 1)];
/// let m = scalar::retrieval_metrics(q, &[1], Some((y, &[2, 1, 2])), Metric::Euclidean, 2, &mut ws)?;
/// assert_eq!((m.precision_at_1, m.recall_at_k), (0.0, 1.0));
/// assert_eq!((m.r_precision, m.mean_average_precision_at_r), (0.0, 0.0)); // R = 1
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn retrieval_metrics(
    queries: Matrix<'_>,
    labels: &[u32],
    reference: Option<(Matrix<'_>, &[u32])>,
    metric: Metric,
    k: usize,
    workspace: &mut [f32],
) -> Result<RetrievalMetrics, Error> {
    let (shape, ref_labels) = check_metrics(
        &queries,
        labels,
        reference,
        Cutoffs::One(k),
        workspace.len(),
        true,
    )?;
    let mut recall = [0.0_f64];
    Ok(evaluate(
        queries,
        labels,
        shape,
        ref_labels,
        metric,
        core::slice::from_ref(&k),
        &mut recall,
        workspace,
    ))
}

/// Scalar twin of [`crate::retrieval_metrics_at`]: as the twin [`retrieval_metrics`], each
/// query ranked once (down to place `max(R, max K)`), with `recall_at[i]` the fraction of
/// evaluated queries with a same-label reference among their `ks[i]` nearest.
///
/// # Errors
///
/// Those of [`crate::retrieval_metrics_at`], except that the workspace must hold
/// [`retrieval_metrics_workspace_len`] elements (the twin's own requirement, reported by
/// [`Error::WorkspaceTooSmall`]).
///
/// # Example
///
/// ```
/// use triplet_kernels::{scalar, Matrix, Metric};
/// // Query label 1's ranking: labels 2, 1, 2.
/// let q = Matrix::new(&[0.0], 1, 1)?;
/// let y = Matrix::new(&[1.0, 2.0, 9.0], 3, 1)?;
/// let mut recall = [0.0; 2];
/// let mut ws = [0.0_f32; scalar::retrieval_metrics_workspace_len(1, 3, 1)];
/// let m = scalar::retrieval_metrics_at(q, &[1], Some((y, &[2, 1, 2])), Metric::Euclidean, &[1, 2], &mut recall, &mut ws)?;
/// assert_eq!(recall, [0.0, 1.0]);
/// assert_eq!(m.recall_at_k, 1.0); // the largest K
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn retrieval_metrics_at(
    queries: Matrix<'_>,
    labels: &[u32],
    reference: Option<(Matrix<'_>, &[u32])>,
    metric: Metric,
    ks: &[usize],
    recall_at: &mut [f64],
    workspace: &mut [f32],
) -> Result<RetrievalMetrics, Error> {
    let (shape, ref_labels) = check_metrics(
        &queries,
        labels,
        reference,
        Cutoffs::Many {
            ks,
            recall_at: recall_at.len(),
        },
        workspace.len(),
        true,
    )?;
    Ok(evaluate(
        queries, labels, shape, ref_labels, metric, ks, recall_at, workspace,
    ))
}

/// The twins' evaluation, arguments checked: the textbook formulas of [`RetrievalMetrics`]
/// over `f64` rankings, with recall at each of `ks` in `recall_at`, averaged in query
/// order.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    queries: Matrix<'_>,
    labels: &[u32],
    shape: Shape<'_>,
    ref_labels: &[u32],
    metric: Metric,
    ks: &[usize],
    recall_at: &mut [f64],
    workspace: &mut [f32],
) -> RetrievalMetrics {
    let k_max = largest(ks);
    for v in recall_at.iter_mut() {
        *v = 0.0;
    }
    let (mut p1, mut rp, mut map) = (0.0_f64, 0.0_f64, 0.0_f64);
    let mut evaluated = 0_usize;
    for (q, (a, &label)) in queries.row_iter().zip(labels).enumerate() {
        let mut r = ref_labels.iter().filter(|&&l| l == label).count();
        if shape.leave_one_out {
            r = r.saturating_sub(1); // the query's own label is in `ref_labels`
        }
        if r == 0 {
            continue;
        }
        // `rel` below reads places `0..max(max K, r)`.
        let pairs = ranked(Some(metric), &shape, a, q, k_max.max(r), workspace);
        let rel = |i: usize| {
            pairs
                .get(i)
                .and_then(|&[_, j]| ref_labels.get(j as usize))
                .is_some_and(|&l| l == label)
        };
        // precision@1 and recall@K for each K.
        p1 += f64::from(u8::from(rel(0)));
        for (sum, &k) in recall_at.iter_mut().zip(ks) {
            *sum += f64::from(u8::from((0..k).any(rel)));
        }
        // R-precision and average precision over the first R.
        let mut hits = 0_usize;
        let mut ap = 0.0_f64;
        for i in 0..r {
            if rel(i) {
                hits += 1;
                ap += hits as f64 / (i + 1) as f64;
            }
        }
        rp += hits as f64 / r as f64;
        map += ap / r as f64;
        evaluated += 1;
    }
    if evaluated == 0 {
        return RetrievalMetrics::ZERO; // every recall sum is still 0
    }
    let n = evaluated as f64;
    // The recall at the largest K (the first of equal ones).
    let mut at_largest = (0_usize, 0.0_f64);
    for (v, &k) in recall_at.iter_mut().zip(ks) {
        *v /= n;
        if k > at_largest.0 {
            at_largest = (k, *v);
        }
    }
    RetrievalMetrics {
        precision_at_1: p1 / n,
        recall_at_k: at_largest.1,
        r_precision: rp / n,
        mean_average_precision_at_r: map / n,
        evaluated,
    }
}
