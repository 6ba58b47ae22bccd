//! Retrieval evaluation: k nearest neighbours and the metric-learning retrieval metrics.
//!
//! Queries `x` (`n x d`) retrieve from a reference set: either a separate gallery `y`
//! (`m x d`), or the queries themselves, leave-one-out (query `i` is never its own
//! neighbour; other rows equal to it are). References are ranked by the chosen [`Metric`]
//! distance, nearest first, **ties broken by the smaller reference index**.
//!
//! - [`knn`]: the `k` nearest references of every query, indices and distances.
//! - [`retrieval_metrics`]: `precision_at_1`, `recall_at_k`, `r_precision` and
//!   `mean_average_precision_at_r`, as pytorch-metric-learning's `AccuracyCalculator`
//!   defines them (see [`RetrievalMetrics`]).
//!
//! One rule for `k` in both: at least 1 and at most the references a query can retrieve
//! (`m` with a gallery, `n - 1` leave-one-out); any other `k` is an
//! [`Error::InvalidParameter`] naming `k`.
//!
//! The streaming design (no `n x m` matrix; workspace linear in `n + m`) is documented
//! on [`knn`], in its public docs.

use crate::distance::{clamped_row_norms, distance, Metric};
use crate::error::Error;
use crate::math;
use crate::matrix::Matrix;
use crate::simd::Backend;
use crate::validate::{check_finite, check_labels, check_len, check_workspace, checked_area};
use crate::workspace::{max_len, min_len, Carve};

/// Queries per block of the streaming pass.
const QUERY_BLOCK: usize = 16;
/// References per block of the streaming pass.
const REFERENCE_BLOCK: usize = 256;

/// Workspace of the fast streaming pass: reference norms, query norms, one tile.
const fn stream_len(queries: usize, references: usize) -> usize {
    let tile = min_len(QUERY_BLOCK, queries).saturating_mul(min_len(REFERENCE_BLOCK, references));
    references.saturating_add(queries).saturating_add(tile)
}

/// Workspace of the scalar twins: one `(f64 distance, f64 index)` pair per reference, in
/// `f32` words, plus one word to reach `f64` alignment.
pub(crate) const fn scalar_len(references: usize) -> usize {
    references.saturating_mul(4).saturating_add(1)
}

/// Workspace elements that [`knn`] needs for `queries` queries against `references`
/// references of dimension `dim`: `references + queries + min(queries, 16) *
/// min(references, 256)` (the cosine norms and one distance tile). For leave-one-out
/// retrieval pass `references = queries`. Linear in `queries + references`; saturates
/// instead of overflowing. The scalar twin has its own,
/// [`crate::scalar::knn_workspace_len`].
pub const fn knn_workspace_len(queries: usize, references: usize, dim: usize) -> usize {
    let _ = dim;
    stream_len(queries, references)
}

/// Workspace elements that [`retrieval_metrics`] needs for `queries` queries against
/// `references` references of dimension `dim`: those of [`knn_workspace_len`] plus
/// `2 references` (the pool of neighbour lists). For leave-one-out retrieval pass
/// `references = queries`. Linear in `queries + references` whatever the class sizes;
/// saturates instead of overflowing. The scalar twin has its own,
/// [`crate::scalar::retrieval_metrics_workspace_len`].
pub const fn retrieval_metrics_workspace_len(
    queries: usize,
    references: usize,
    dim: usize,
) -> usize {
    let _ = dim;
    stream_len(queries, references).saturating_add(references.saturating_mul(2))
}

/// The four retrieval metrics of [`retrieval_metrics`], each a mean over the evaluated
/// queries (those with at least one same-label reference).
///
/// For a query with `R >= 1` same-label references (other than itself, leave-one-out),
/// with `rel(i) = 1` when its `i`-th nearest reference (1-based) shares its label:
///
/// - `precision_at_1 = rel(1)` (the same as recall@1);
/// - `recall_at_k = 1` if `rel(i) = 1` for some `i <= K`, else 0;
/// - `r_precision = (sum over i <= R of rel(i)) / R`;
/// - `mean_average_precision_at_r = (1/R) sum over i <= R with rel(i) = 1 of
///   (sum over j <= i of rel(j)) / i`.
///
/// When no query has a same-label reference, every metric is 0 and `evaluated` is 0.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct RetrievalMetrics {
    /// Fraction of evaluated queries whose nearest reference shares their label.
    pub precision_at_1: f64,
    /// Fraction of evaluated queries with a same-label reference among their `K` nearest.
    pub recall_at_k: f64,
    /// Mean over evaluated queries of the fraction of same-label items among the `R`
    /// nearest.
    pub r_precision: f64,
    /// Mean over evaluated queries of the average precision over the `R` nearest, divided
    /// by `R` (MAP@R, Musgrave et al., "A Metric Learning Reality Check", 2020).
    pub mean_average_precision_at_r: f64,
    /// Number of queries with `R >= 1`, the divisor of every mean; the other queries are
    /// left out.
    pub evaluated: usize,
}

impl RetrievalMetrics {
    /// All metrics 0 over 0 queries.
    pub(crate) const ZERO: Self = RetrievalMetrics {
        precision_at_1: 0.0,
        recall_at_k: 0.0,
        r_precision: 0.0,
        mean_average_precision_at_r: 0.0,
        evaluated: 0,
    };
}

/// Running sums of the per-query metrics, in query order (the fast kernel and its twin
/// add the same values in the same order, so equal neighbour lists give equal bits).
#[derive(Default)]
struct MetricSums {
    p1: f64,
    recall: f64,
    rp: f64,
    map: f64,
    evaluated: usize,
}

impl MetricSums {
    /// Adds one query with `r >= 1` same-label references, given the label matches of its
    /// `max(r, k)` nearest neighbours in order (`k >= 1`).
    fn add(&mut self, r: usize, k: usize, matches: impl Iterator<Item = bool>) {
        let mut hits = 0_usize;
        let mut ap = 0.0_f64;
        let mut first = false;
        let mut within_k = false;
        for (i, m) in matches.enumerate() {
            if i == 0 {
                first = m;
            }
            if m && i < k {
                within_k = true;
            }
            if m && i < r {
                hits += 1;
                ap += hits as f64 / (i + 1) as f64;
            }
        }
        self.p1 += f64::from(u8::from(first));
        self.recall += f64::from(u8::from(within_k));
        self.rp += hits as f64 / r as f64;
        self.map += ap / r as f64;
        self.evaluated += 1;
    }

    /// The means, or [`RetrievalMetrics::ZERO`] when no query was evaluated.
    fn finish(&self) -> RetrievalMetrics {
        if self.evaluated == 0 {
            return RetrievalMetrics::ZERO;
        }
        let n = self.evaluated as f64;
        RetrievalMetrics {
            precision_at_1: self.p1 / n,
            recall_at_k: self.recall / n,
            r_precision: self.rp / n,
            mean_average_precision_at_r: self.map / n,
            evaluated: self.evaluated,
        }
    }
}

/// Checked shapes of a retrieval call.
#[derive(Clone, Copy)]
pub(crate) struct Shape<'a> {
    /// The reference set (the queries themselves when `leave_one_out`).
    pub(crate) refs: Matrix<'a>,
    /// Whether query `i` is reference `i`, to be skipped.
    pub(crate) leave_one_out: bool,
    /// References a query can retrieve: `m`, or `n - 1` leave-one-out.
    pub(crate) available: usize,
}

/// Shared checks: dimensions and the `u32` index range of the reference set.
fn check_refs<'a>(queries: &Matrix<'a>, reference: Option<Matrix<'a>>) -> Result<Shape<'a>, Error> {
    let (refs, leave_one_out) = match reference {
        Some(y) => (y, false),
        None => (*queries, true),
    };
    if refs.dim() != queries.dim() {
        return Err(Error::DimensionMismatch {
            left: queries.dim(),
            right: refs.dim(),
        });
    }
    let m = refs.rows();
    if u32::try_from(m).is_err() {
        return Err(Error::IndexOutOfRange {
            buffer: "reference",
            position: m - 1,
            index: m - 1,
            bound: u32::MAX as usize,
        });
    }
    let available = if leave_one_out { m - 1 } else { m };
    Ok(Shape {
        refs,
        leave_one_out,
        available,
    })
}

/// The domain of `k` in [`knn`] and [`retrieval_metrics`], as their docs state it.
const K_EXPECTED: &str = "1 <= k <= references a query can retrieve";

/// Validates the arguments of [`knn`] and its twin.
pub(crate) fn check_knn<'a>(
    queries: &Matrix<'a>,
    reference: Option<Matrix<'a>>,
    k: usize,
    indices: usize,
    distances: usize,
    workspace: usize,
    twin: bool,
) -> Result<Shape<'a>, Error> {
    let shape = check_refs(queries, reference)?;
    if k == 0 || k > shape.available {
        return Err(Error::InvalidParameter {
            name: "k",
            expected: K_EXPECTED,
        });
    }
    let len = checked_area(queries.rows(), k)?;
    check_len("indices", len, indices)?;
    check_len("distances", len, distances)?;
    let required = if twin {
        scalar_len(shape.refs.rows())
    } else {
        knn_workspace_len(queries.rows(), shape.refs.rows(), queries.dim())
    };
    check_workspace(required, workspace)?;
    Ok(shape)
}

/// Validates the arguments of [`retrieval_metrics`] and its twin; returns the shape and
/// the reference labels.
pub(crate) fn check_metrics<'a>(
    queries: &Matrix<'a>,
    labels: &'a [u32],
    reference: Option<(Matrix<'a>, &'a [u32])>,
    k: usize,
    workspace: usize,
    twin: bool,
) -> Result<(Shape<'a>, &'a [u32]), Error> {
    let shape = check_refs(queries, reference.map(|(y, _)| y))?;
    check_labels(queries, labels)?;
    let ref_labels = match reference {
        Some((y, yl)) => {
            check_len("reference_labels", y.rows(), yl.len())?;
            yl
        }
        None => labels,
    };
    if k == 0 || k > shape.available {
        return Err(Error::InvalidParameter {
            name: "k",
            expected: K_EXPECTED,
        });
    }
    let required = if twin {
        scalar_len(shape.refs.rows())
    } else {
        retrieval_metrics_workspace_len(queries.rows(), shape.refs.rows(), queries.dim())
    };
    check_workspace(required, workspace)?;
    check_finite("queries", queries.as_slice(), queries.dim())?;
    if !shape.leave_one_out {
        check_finite("reference", shape.refs.as_slice(), shape.refs.dim())?;
    }
    Ok((shape, ref_labels))
}

/// Number of references sharing query `q`'s label, not counting `q` itself
/// leave-one-out.
fn same_label_count(shape: &Shape<'_>, label: u32, ref_labels: &[u32]) -> usize {
    let c = ref_labels.iter().filter(|&&l| l == label).count();
    if shape.leave_one_out {
        c.saturating_sub(1)
    } else {
        c
    }
}

/// The distance the streaming pass ranks by: the squared distance for
/// [`Metric::Euclidean`] (the same order, `sqrt` being monotone, without a square root
/// per pair; the kept distances are rooted at the end), else the metric itself.
pub(crate) fn ranking_metric(metric: Metric) -> Metric {
    match metric {
        Metric::Euclidean => Metric::SquaredEuclidean,
        other => other,
    }
}

/// `true` when key `(da, ia)` ranks strictly before `(db, ib)`: smaller distance first,
/// NaN after every number, equal distances (and NaN against NaN) by smaller index.
#[inline]
fn before(da: f32, ia: u32, db: f32, ib: u32) -> bool {
    if da < db {
        true
    } else if da == db {
        ia < ib
    } else {
        // `da > db`, or at least one is NaN.
        match (da.is_nan(), db.is_nan()) {
            (false, true) => true,
            (true, true) => ia < ib,
            _ => false,
        }
    }
}

/// The `cap` nearest candidates seen so far, as a max-heap (farthest at the root) over
/// two parallel slices of length `cap`.
struct Heap<'s> {
    dist: &'s mut [f32],
    idx: &'s mut [u32],
    len: usize,
}

impl<'s> Heap<'s> {
    fn new(dist: &'s mut [f32], idx: &'s mut [u32]) -> Self {
        let cap = dist.len().min(idx.len());
        Heap {
            dist: dist.split_at_mut(cap).0,
            idx: idx.split_at_mut(cap).0,
            len: 0,
        }
    }

    fn empty() -> Heap<'static> {
        Heap {
            dist: &mut [],
            idx: &mut [],
            len: 0,
        }
    }

    #[inline]
    fn key(&self, i: usize) -> Option<(f32, u32)> {
        Some((*self.dist.get(i)?, *self.idx.get(i)?))
    }

    #[inline]
    fn set(&mut self, i: usize, d: f32, j: u32) {
        if let (Some(sd), Some(sj)) = (self.dist.get_mut(i), self.idx.get_mut(i)) {
            *sd = d;
            *sj = j;
        }
    }

    /// Offers the candidates `row[r]`, reference `start + r`, except `r == skip`. Every
    /// index offered must be above every index already held (the streaming order), so a
    /// candidate whose distance equals the farthest kept one loses the tie: the common
    /// case costs one comparison.
    #[inline]
    fn offer(&mut self, row: &[f32], start: usize, skip: usize) {
        let cap = self.dist.len();
        let mut full = self.len == cap;
        let mut worst = self.dist.first().copied().unwrap_or(f32::NAN);
        for (r, &d) in row.iter().enumerate() {
            // Kept when nearer than the farthest kept entry, or a number against its NaN.
            let nearer = d < worst || (worst.is_nan() && !d.is_nan());
            if full && !nearer {
                continue;
            }
            if r == skip {
                continue;
            }
            // `start + r < m <= u32::MAX`, checked on entry.
            let j = (start + r) as u32;
            if full {
                self.sift_down(0, cap, d, j);
            } else {
                self.sift_up(d, j);
                full = self.len == cap;
            }
            worst = self.dist.first().copied().unwrap_or(f32::NAN);
        }
    }

    /// Inserts into a heap that is not full.
    fn sift_up(&mut self, d: f32, j: u32) {
        let mut pos = self.len;
        self.len += 1;
        while pos > 0 {
            let parent = (pos - 1) / 2;
            let Some((pd, pj)) = self.key(parent) else {
                break;
            };
            if before(pd, pj, d, j) {
                self.set(pos, pd, pj);
                pos = parent;
            } else {
                break;
            }
        }
        self.set(pos, d, j);
    }

    /// Places `(d, j)` in the hole at `pos` of the heap's first `len` entries, moving
    /// larger children up.
    fn sift_down(&mut self, mut pos: usize, len: usize, d: f32, j: u32) {
        // `pos < len <= cap`, a slice length, so `2 * pos + 2` cannot overflow.
        loop {
            let left = 2 * pos + 1;
            if left >= len {
                break;
            }
            let Some((mut cd, mut cj)) = self.key(left) else {
                break;
            };
            let mut child = left;
            if left + 1 < len {
                if let Some((rd, rj)) = self.key(left + 1) {
                    if before(cd, cj, rd, rj) {
                        (cd, cj, child) = (rd, rj, left + 1);
                    }
                }
            }
            if before(d, j, cd, cj) {
                self.set(pos, cd, cj);
                pos = child;
            } else {
                break;
            }
        }
        self.set(pos, d, j);
    }

    /// Sorts the entries nearest first (heapsort); the heap must be full.
    fn sort(&mut self) {
        let mut end = self.len;
        while end > 1 {
            end -= 1;
            let (Some((rd, rj)), Some((ld, lj))) = (self.key(0), self.key(end)) else {
                break;
            };
            self.set(end, rd, rj);
            self.sift_down(0, end, ld, lj);
        }
    }
}

/// What the streaming pass needs besides the heaps.
struct Stream<'a> {
    /// The backend of the whole call.
    backend: Backend,
    metric: Metric,
    queries: Matrix<'a>,
    shape: Shape<'a>,
    /// Clamped norms of the queries (cosine only; else unread).
    q_norms: &'a [f32],
    /// Clamped norms of the references (cosine only; else unread).
    r_norms: &'a [f32],
}

impl Stream<'_> {
    /// Streams every reference block past the queries `block[i]`, pushing each distance
    /// into `heaps[i]`. `tile` holds at least `block.len() * min(256, m)` values.
    fn scan(&self, block: &[usize], heaps: &mut [Heap<'_>], tile: &mut [f32]) {
        let refs = self.shape.refs;
        let dim = refs.dim();
        let m = refs.rows();
        let width = min_len(REFERENCE_BLOCK, m);
        let mut start = 0;
        while start < m {
            let rb = min_len(REFERENCE_BLOCK, m - start);
            let (Some(rows), Some(r_norms)) = (
                refs.as_slice().get(start * dim..(start + rb) * dim),
                self.r_norms.get(start..start + rb),
            ) else {
                break;
            };
            // Distances of the whole tile first, while the reference block is in cache.
            for (&q, t_row) in block.iter().zip(tile.chunks_exact_mut(width)) {
                let (Some(a), Some(&na)) = (self.queries.row(q), self.q_norms.get(q)) else {
                    continue;
                };
                for ((b, &nb), t) in rows.chunks_exact(dim).zip(r_norms).zip(t_row.iter_mut()) {
                    *t = distance(self.backend, self.metric, a, b, na, nb);
                }
            }
            // Then selection, query by query.
            for ((&q, heap), t_row) in block
                .iter()
                .zip(heaps.iter_mut())
                .zip(tile.chunks_exact(width))
            {
                let skip = if self.shape.leave_one_out {
                    q.wrapping_sub(start)
                } else {
                    usize::MAX
                };
                heap.offer(t_row.get(..rb).unwrap_or_default(), start, skip);
            }
            start += rb;
        }
        for heap in heaps.iter_mut() {
            heap.sort();
        }
    }
}

/// The workspace of the fast pass, split.
struct Parts<'w> {
    r_norms: &'w [f32],
    q_norms: &'w [f32],
    tile: &'w mut [f32],
    rest: &'w mut [f32],
}

/// Splits the workspace of the fast pass into reference norms, query norms, tile and the
/// rest, computing the norms for cosine (the other metrics never read them).
fn prepare<'w>(
    backend: Backend,
    queries: Matrix<'_>,
    shape: Shape<'_>,
    metric: Metric,
    workspace: &'w mut [f32],
) -> Option<Parts<'w>> {
    let (n, m) = (queries.rows(), shape.refs.rows());
    let mut ws = Carve::new(workspace);
    let r_norms = ws.take(m).ok()?;
    let q_norms = ws.take(n).ok()?;
    let tile = ws
        .take(min_len(QUERY_BLOCK, n) * min_len(REFERENCE_BLOCK, m))
        .ok()?;
    if metric == Metric::Cosine {
        clamped_row_norms(backend, &shape.refs, r_norms);
        if shape.leave_one_out {
            for (q, r) in q_norms.iter_mut().zip(r_norms.iter()) {
                *q = *r;
            }
        } else {
            clamped_row_norms(backend, &queries, q_norms);
        }
    }
    Some(Parts {
        r_norms,
        q_norms,
        tile,
        rest: ws.rest(),
    })
}

/// The `k` nearest references of every query: `indices[i * k + t]` is the index (into the
/// reference set) of query `i`'s `t`-th nearest reference and `distances[i * k + t]` its
/// distance, nearest first.
///
/// `reference` is the gallery `y` (`m x d`), or `None` to retrieve from the queries
/// themselves, leave-one-out: query `i` never lists itself (duplicates of it are listed).
/// Ranking is by `metric` distance, ties broken by the smaller index. The kernel streams
/// over blocks of the reference set (see [Streaming design](#streaming-design) below),
/// with no `n x m` matrix. Scalar twin: [`crate::scalar::knn`].
///
/// `indices` and `distances` have exactly `n * k` elements and are fully overwritten.
/// `workspace` needs [`knn_workspace_len`]`(n, m, d)` elements (`m = n` leave-one-out);
/// its contents are garbage before and after.
///
/// # Streaming design
///
/// No kernel of this family forms the `n x m` distance matrix. Queries are taken in blocks
/// of at most 16 and references in blocks of at most 256 rows; for each (query block,
/// reference block) pair the kernel computes the distance tile (at most 16 x 256 values,
/// in the workspace) while the reference block is hot in cache, then offers each tile row
/// to its query's bounded max-heap of `(distance, index)` keys. References arrive in
/// increasing index order, so a candidate enters only when it is strictly nearer than the
/// farthest entry kept: once a heap is full almost every candidate costs one comparison.
/// After the last reference block each heap is sorted in place (heapsort), nearest first.
/// The gallery is streamed `ceil(n / 16)` times.
///
/// - `knn` keeps its heaps in the caller's `indices` and `distances` rows: the fast pass
///   needs only the tile and the cosine norms, `n + m + 16 * 256` elements.
/// - [`retrieval_metrics`] needs, for a query whose label has `R` other occurrences among
///   the references, its `max(R, K)` nearest neighbours; `R` varies per query and can be
///   as large as `m`. It counts `R` for the next queries (label comparisons only, no
///   distance), skips those with `R = 0`, and packs consecutive queries into a block
///   while their heaps fit together in a pool of `m` (distance, index) slots of the
///   workspace; one query always fits, since `max(R, K) <= m`. Its fast pass needs
///   `3 m + n + 16 * 256` elements, whatever the class sizes.
///
/// The workspace queries ([`knn_workspace_len`], [`retrieval_metrics_workspace_len`])
/// return exactly these; the scalar twins need `4 m + 1` (one `f64` distance and index
/// per reference), given by [`crate::scalar::knn_workspace_len`] and
/// [`crate::scalar::retrieval_metrics_workspace_len`]. Linear in `n + m`, never `n x m`.
///
/// # Errors
///
/// - [`Error::DimensionMismatch`] when `reference` has another dimension than `queries`;
/// - [`Error::IndexOutOfRange`] (`"reference"`) when the reference set has more than
///   `u32::MAX` rows (its indices would not fit a `u32`);
/// - [`Error::InvalidParameter`] (`"k"`) when `k == 0` or `k` exceeds the references a
///   query can retrieve (`m`, or `n - 1` leave-one-out);
/// - [`Error::ShapeOverflow`] when `n * k` overflows `usize`;
/// - [`Error::LengthMismatch`] (`"indices"`, `"distances"`) when an output does not have
///   `n * k` elements;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short.
///
/// # Numerics
///
/// Distances are computed pair by pair in the direct form (as
/// [`crate::DistanceMode::Direct`], not the Gram form of [`crate::cross_distances`]):
/// within `(d / 8 + 10) * 2^-24 * S` of the exact ones, `S` the sum of the absolute
/// terms of the distance: `sum (a_i - b_i)^2` for [`Metric::SquaredEuclidean`], the
/// distance itself for [`Metric::Euclidean`] (a relative bound, which the square root
/// halves), `1 + sum |a_i b_i| / (|a| |b|)` for [`Metric::Cosine`] (norms clamped, at most
/// 2). Terms below `f32`'s normal range add at most `(d + 8) * 1.2e-38` to a squared
/// distance (its square root to a Euclidean one). The bounds hold while every row's
/// squared norm stays below `f32::MAX / 4`, as those of [`crate::DistanceMode`].
/// [`Metric::Euclidean`] ranks by the squared distance, which orders references exactly
/// as the distance does, and takes one square root per listed neighbour instead of one
/// per pair: its lists are those of [`Metric::SquaredEuclidean`], distances rooted. The
/// data are not scanned: a NaN distance ranks after every number, NaN against NaN by
/// index, so a reference row holding NaN ranks after every reference at a numeric
/// distance, for every query, and a query row holding NaN gets the first `k` indices
/// with NaN distances. Where two references are within rounding error of each other the
/// fast kernel and its twin may order them differently; with data whose distances are
/// exact in `f32` (small integers, Euclidean metrics) both return identical lists, ties
/// included.
///
/// # Example
///
/// ```
/// use triplet_kernels::{knn, knn_workspace_len, Matrix, Metric};
/// // Four points on a line; each one's nearest other point, leave-one-out.
/// let x = Matrix::new(&[0.0, 1.0, 3.0, 7.0], 4, 1)?;
/// let mut idx = [0_u32; 4];
/// let mut dist = [0.0_f32; 4];
/// let mut ws = [0.0_f32; knn_workspace_len(4, 4, 1)];
/// knn(x, None, Metric::Euclidean, 1, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!(idx, [1, 0, 1, 2]);
/// assert_eq!(dist, [1.0, 1.0, 2.0, 4.0]);
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
        false,
    )?;
    // Read once: the norms and every distance of this call use it.
    let backend = Backend::active();
    // Unreachable `else`: the workspace length was checked.
    let Some(Parts {
        r_norms,
        q_norms,
        tile,
        ..
    }) = prepare(backend, queries, shape, metric, workspace)
    else {
        return Ok(());
    };
    let stream = Stream {
        backend,
        metric: ranking_metric(metric),
        queries,
        shape,
        q_norms,
        r_norms,
    };
    let n = queries.rows();
    let mut ids = [0_usize; QUERY_BLOCK];
    let mut rows = indices
        .chunks_exact_mut(k)
        .zip(distances.chunks_exact_mut(k));
    let mut q0 = 0;
    while q0 < n {
        let qb = min_len(QUERY_BLOCK, n - q0);
        let mut heaps: [Heap<'_>; QUERY_BLOCK] = core::array::from_fn(|_| Heap::empty());
        for ((id, heap), (q, (i_row, d_row))) in ids
            .iter_mut()
            .zip(heaps.iter_mut())
            .zip((q0..q0 + qb).zip(rows.by_ref()))
        {
            *id = q;
            *heap = Heap::new(d_row, i_row);
        }
        let block = ids.get(..qb).unwrap_or_default();
        stream.scan(block, heaps.get_mut(..qb).unwrap_or_default(), tile);
        q0 += qb;
    }
    if metric == Metric::Euclidean {
        for d in distances.iter_mut() {
            *d = math::sqrt(*d);
        }
    }
    Ok(())
}

/// Retrieval metrics of labelled queries against a labelled reference set, as
/// pytorch-metric-learning's `AccuracyCalculator` computes them (with `k =
/// "max_bin_count"`, `avg_of_avgs = False`): `precision_at_1`, `r_precision`,
/// `mean_average_precision_at_r`, plus `recall_at_k` for the given `k`. See
/// [`RetrievalMetrics`] for the formulas.
///
/// `labels` has one label per query; `reference` is the gallery `y` (`m x d`) with its
/// labels, or `None` to retrieve from the queries themselves, leave-one-out (a query is
/// not its own neighbour, nor counted in its `R`). For each query, `R` is the number of
/// references sharing its label; queries with `R = 0` are left out of every mean (the
/// count of the others is [`RetrievalMetrics::evaluated`]; when it is 0 every metric is
/// 0). Ranking is by `metric` distance, ties broken by the smaller index, exactly as
/// [`knn`] ranks, with the `max(R, k)` nearest neighbours of each query selected by the
/// same streaming pass (see [`knn`'s streaming design](knn#streaming-design)): no
/// `n x m` matrix, whatever `R`.
///
/// `recall_at_k` is the fraction of evaluated queries with at least one same-label
/// reference among their `k` nearest (the usual metric-learning recall@K; with `k = 1` it
/// equals `precision_at_1`). `k` follows [`knn`]'s rule: at least 1 and at most the
/// references a query can retrieve (`m`, or `n - 1` leave-one-out). Scalar twin:
/// [`crate::scalar::retrieval_metrics`].
///
/// `workspace` needs [`retrieval_metrics_workspace_len`]`(n, m, d)` elements (`m = n`
/// leave-one-out); its contents are garbage before and after.
///
/// # Errors
///
/// - [`Error::DimensionMismatch`] when `reference` has another dimension than `queries`;
/// - [`Error::IndexOutOfRange`] (`"reference"`) when the reference set has more than
///   `u32::MAX` rows;
/// - [`Error::LengthMismatch`] (`"labels"`, `"reference_labels"`) when a label slice does
///   not have one label per row;
/// - [`Error::InvalidParameter`] (`"k"`) when `k == 0` or `k` exceeds the references a
///   query can retrieve (`m`, or `n - 1` leave-one-out; so a single query cannot be
///   evaluated leave-one-out);
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short;
/// - [`Error::NonFinite`] (`"queries"` or `"reference"`, row and column of the first one)
///   when the embeddings hold NaN or infinity: a ranking of such data would silently hide
///   it, so the data are scanned first.
///
/// # Numerics
///
/// Each metric is a mean of exact per-query rationals accumulated in `f64`. The only
/// difference from the `f64` twin comes from distances within rounding error of each
/// other (see [`knn`]), which may swap two neighbours; with data whose distances are exact
/// in `f32` (small integers, Euclidean metrics) both return identical values. Finite data
/// whose distances overflow `f32` rank by the [`knn`] rule (infinity, then NaN, last).
///
/// # Example
///
/// ```
/// use triplet_kernels::{retrieval_metrics, retrieval_metrics_workspace_len, Matrix, Metric};
/// // Two tight classes on a line, plus a lone label (left out: R = 0).
/// let x = Matrix::new(&[0.0, 1.0, 10.0, 11.0, 50.0], 5, 1)?;
/// let labels = [7, 7, 3, 3, 9];
/// let mut ws = [0.0_f32; retrieval_metrics_workspace_len(5, 5, 1)];
/// let m = retrieval_metrics(x, &labels, None, Metric::Euclidean, 1, &mut ws)?;
/// assert_eq!(m.evaluated, 4);
/// assert_eq!(m.precision_at_1, 1.0);
/// assert_eq!(m.mean_average_precision_at_r, 1.0);
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
    let (shape, ref_labels) =
        check_metrics(&queries, labels, reference, k, workspace.len(), false)?;
    // Read once: the norms and every distance of this call use it.
    let backend = Backend::active();
    let m = shape.refs.rows();
    // The `else` branches below are unreachable: the workspace length was checked, and an
    // `f32` slice always reinterprets as `u32`.
    let Some(Parts {
        r_norms,
        q_norms,
        tile,
        rest,
    }) = prepare(backend, queries, shape, metric, workspace)
    else {
        return Ok(RetrievalMetrics::ZERO);
    };
    let mut pool = Carve::new(rest);
    let (Ok(pool_d), Ok(pool_i)) = (pool.take(m), pool.take_u32(m)) else {
        return Ok(RetrievalMetrics::ZERO);
    };
    let stream = Stream {
        backend,
        metric: ranking_metric(metric),
        queries,
        shape,
        q_norms,
        r_norms,
    };
    let mut sums = MetricSums::default();
    let mut next = 0;
    let mut ids = [0_usize; QUERY_BLOCK];
    let mut rs = [0_usize; QUERY_BLOCK];
    while next < labels.len() {
        // Pack the next queries with R >= 1 whose heaps fit in the pool together.
        let mut heaps: [Heap<'_>; QUERY_BLOCK] = core::array::from_fn(|_| Heap::empty());
        let mut free_d: &mut [f32] = &mut *pool_d;
        let mut free_i: &mut [u32] = &mut *pool_i;
        let mut count = 0;
        while count < QUERY_BLOCK {
            let Some(&label) = labels.get(next) else {
                break;
            };
            let r = same_label_count(&shape, label, ref_labels);
            if r == 0 {
                next += 1;
                continue;
            }
            let cap = max_len(r, k);
            if cap > free_d.len() && count > 0 {
                break;
            }
            let cap = min_len(cap, free_d.len());
            let (d, rest_d) = free_d.split_at_mut(cap);
            let (i, rest_i) = free_i.split_at_mut(min_len(cap, free_i.len()));
            (free_d, free_i) = (rest_d, rest_i);
            if let (Some(h), Some(id), Some(rr)) =
                (heaps.get_mut(count), ids.get_mut(count), rs.get_mut(count))
            {
                *h = Heap::new(d, i);
                *id = next;
                *rr = r;
            }
            count += 1;
            next += 1;
        }
        if count == 0 {
            break;
        }
        let block = ids.get(..count).unwrap_or_default();
        let heaps = heaps.get_mut(..count).unwrap_or_default();
        stream.scan(block, heaps, tile);
        for ((&q, &r), heap) in block.iter().zip(rs.iter()).zip(heaps.iter()) {
            let label = labels.get(q).copied().unwrap_or_default();
            let matches = heap
                .idx
                .iter()
                .map(|&j| ref_labels.get(j as usize).is_some_and(|&l| l == label));
            sums.add(r, k, matches);
        }
    }
    Ok(sums.finish())
}
