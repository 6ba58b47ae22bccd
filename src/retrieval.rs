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
//! - [`retrieval_metrics_at`]: the same, with recall at several `K` (say 1, 5 and 10) from
//!   one ranking per query.
//!
//! One rule for `k` in all three (for every `K` of [`retrieval_metrics_at`]): at least 1
//! and at most the references a query can retrieve (`m` with a gallery, `n - 1`
//! leave-one-out); any other `k` is an [`Error::InvalidParameter`] naming `k` (`ks`).
//!
//! The streaming design (no `n x m` matrix; workspace linear in `n + m`) is documented
//! on [`knn`], in its public docs.

mod bf16;
mod edge;
mod gallery;
mod heap;
mod i8f;
pub(crate) mod quant;
mod search;

pub(crate) use edge::{
    check_rows as edge_rows, check_search as edge_check, i8_parts as edge_i8_parts, rescored_check,
};
pub use edge::{
    knn_edge, knn_edge_i8, knn_edge_i8_workspace_len, knn_edge_workspace_len, knn_hamming,
    knn_rescored, knn_rescored_workspace_len, prepare_edge_gallery,
    prepare_edge_gallery_workspace_len, EdgeGallery, I8_MAX_DIM,
};
pub use quant::{
    binary_row_words, binary_words_len, dequantize_bf16, dequantize_binary, dequantize_f16,
    dequantize_i8, quantize_bf16, quantize_binary, quantize_f16, quantize_i8, BinaryMatrix,
    EdgeFormat, EdgeMatrix,
};

pub use gallery::{
    gallery_filter_len, gallery_norms_len, knn_gallery, knn_gallery_workspace_len, prepare_gallery,
    prepare_gallery_filtered, Gallery, SearchMetric,
};

use crate::distance::{metric_norms, Metric};
use crate::error::Error;
use crate::math;
use crate::matrix::Matrix;
use crate::simd::Backend;
use crate::validate::{check_finite, check_labels, check_len, check_workspace, checked_area};
use crate::verification::radix_sort;
use crate::workspace::{max_len, min_len, Carve};
use heap::Heap;
use search::{stream_len, Rank, Stream, QUERY_BLOCK, SMALL_BLOCK};

/// Workspace of the scalar twins: one `(f64 distance, f64 index)` pair per reference, in
/// `f32` words, plus one word to reach `f64` alignment.
pub(crate) const fn scalar_len(references: usize) -> usize {
    references.saturating_mul(4).saturating_add(1)
}

/// Workspace elements that [`knn`] needs for `queries` queries against `references`
/// references of dimension `dim`: `references + 2 queries + qb rb +`
/// [`crate::cross_distances_rows_workspace_len`]`(qb, rb, dim) + p(queries) + p(rb)` with
/// `qb = min(queries, 128)`, `rb = min(references, 512)` and `p(r) = ceil(r / 16) 16
/// (ceil(dim / 2) + 1)` (the norm terms, the heap sizes, one Gram tile and its packed
/// rows, and the bf16 filter's packed rows, in which the int8 filter's fit; see
/// [`knn`]'s streaming design). For leave-one-out retrieval pass `references = queries`. Linear in `queries + references`; saturates
/// instead of overflowing. The scalar twin has its own,
/// [`crate::scalar::knn_workspace_len`].
pub const fn knn_workspace_len(queries: usize, references: usize, dim: usize) -> usize {
    stream_len(queries, references, dim)
}

/// Workspace elements that [`retrieval_metrics`] and [`retrieval_metrics_at`] need for
/// `queries` queries against `references` references of dimension `dim`: those of
/// [`knn_workspace_len`] plus `5 references`: the pool of neighbour lists (`2 references`
/// (distance, index) slots, see [`knn`'s streaming design](knn#streaming-design)) and a
/// sorted copy of the reference labels (to count each query's same-label references by
/// binary search). For leave-one-out retrieval pass `references = queries`. Linear in
/// `queries + references` whatever the class sizes; saturates instead of overflowing. The
/// scalar twins have their own, [`crate::scalar::retrieval_metrics_workspace_len`].
pub const fn retrieval_metrics_workspace_len(
    queries: usize,
    references: usize,
    dim: usize,
) -> usize {
    stream_len(queries, references, dim).saturating_add(references.saturating_mul(POOL_WORDS))
}

/// Workspace words per reference beyond the streaming pass: the pool of [`POOL_SLOTS`]
/// (distance, index) slots, two words each, and one sorted reference label.
const POOL_WORDS: usize = 2 * POOL_SLOTS + 1;

/// Heap slots of the pool per reference: two, so that a full block of 128 queries fits
/// whenever their lists average at most `m / 64` neighbours (one Gram tile of full height
/// per reference block; with `m` slots such a block would be split in two).
const POOL_SLOTS: usize = 2;

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
    /// Fraction of evaluated queries with a same-label reference among their `K` nearest
    /// (for [`retrieval_metrics_at`], the largest of its `K`).
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
/// add the same values in the same order, so equal neighbour lists give equal bits). The
/// recall sums, one per `K`, live in the caller's `recall_at` (every argument is checked
/// by then: writing it cannot precede an error).
#[derive(Default)]
struct MetricSums {
    p1: f64,
    rp: f64,
    map: f64,
    evaluated: usize,
}

impl MetricSums {
    /// Adds one query with `r >= 1` same-label references, given the label matches of its
    /// `max(r, max K)` nearest neighbours in order; `recall[i]` counts the queries with a
    /// match among their `ks[i]` nearest.
    fn add(
        &mut self,
        r: usize,
        ks: &[usize],
        recall: &mut [f64],
        matches: impl Iterator<Item = bool>,
    ) {
        let mut hits = 0_usize;
        let mut ap = 0.0_f64;
        // The 0-based rank of the first match: recall@K is `first < K` for every K.
        let mut first = usize::MAX;
        for (i, m) in matches.enumerate() {
            if m && first == usize::MAX {
                first = i;
            }
            if m && i < r {
                hits += 1;
                ap += hits as f64 / (i + 1) as f64;
            }
        }
        self.p1 += f64::from(u8::from(first == 0));
        for (sum, &k) in recall.iter_mut().zip(ks) {
            *sum += f64::from(u8::from(first < k));
        }
        self.rp += hits as f64 / r as f64;
        self.map += ap / r as f64;
        self.evaluated += 1;
    }

    /// The means, or [`RetrievalMetrics::ZERO`] when no query was evaluated; turns the
    /// recall sums in `recall` into means too, and reports the recall at the largest `K`
    /// (the first of equal ones) as `recall_at_k`.
    fn finish(&self, ks: &[usize], recall: &mut [f64]) -> RetrievalMetrics {
        if self.evaluated == 0 {
            for v in recall.iter_mut() {
                *v = 0.0;
            }
            return RetrievalMetrics::ZERO;
        }
        let n = self.evaluated as f64;
        let mut at_largest = (0_usize, 0.0_f64);
        for (v, &k) in recall.iter_mut().zip(ks) {
            *v /= n;
            if k > at_largest.0 {
                at_largest = (k, *v);
            }
        }
        RetrievalMetrics {
            precision_at_1: self.p1 / n,
            recall_at_k: at_largest.1,
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

/// The domain of `ks` in [`retrieval_metrics_at`], as its docs state it.
const KS_EXPECTED: &str = "non-empty, each 1 <= K <= references a query can retrieve";

/// The cut-offs of a metrics call: [`retrieval_metrics`]'s one `k`, or
/// [`retrieval_metrics_at`]'s `ks` with the length of its `recall_at` output.
#[derive(Clone, Copy)]
pub(crate) enum Cutoffs<'k> {
    One(usize),
    Many { ks: &'k [usize], recall_at: usize },
}

impl Cutoffs<'_> {
    /// Checks the cut-offs against the references a query can retrieve, and the length of
    /// the recall output.
    fn check(self, available: usize) -> Result<(), Error> {
        let ok = |k: usize| k >= 1 && k <= available;
        match self {
            Cutoffs::One(k) if ok(k) => Ok(()),
            Cutoffs::One(_) => Err(Error::InvalidParameter {
                name: "k",
                expected: K_EXPECTED,
            }),
            Cutoffs::Many { ks, recall_at } => {
                if ks.is_empty() || !ks.iter().all(|&k| ok(k)) {
                    return Err(Error::InvalidParameter {
                        name: "ks",
                        expected: KS_EXPECTED,
                    });
                }
                check_len("recall_at", ks.len(), recall_at)
            }
        }
    }
}

/// The largest of `ks` (0 for none).
pub(crate) fn largest(ks: &[usize]) -> usize {
    ks.iter().fold(0, |a, &k| max_len(a, k))
}

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

/// Validates the arguments of [`retrieval_metrics`], [`retrieval_metrics_at`] and their
/// twins, in the documented order; returns the shape and the reference labels.
pub(crate) fn check_metrics<'a>(
    queries: &Matrix<'a>,
    labels: &'a [u32],
    reference: Option<(Matrix<'a>, &'a [u32])>,
    cutoffs: Cutoffs<'_>,
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
    cutoffs.check(shape.available)?;
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

/// Number of references labelled `label`, from the reference labels sorted ascending
/// (two binary searches), not counting the query itself leave-one-out.
fn same_label_count(shape: &Shape<'_>, label: u32, sorted: &[u32]) -> usize {
    let below = match label.checked_sub(1) {
        Some(l) => first_above(sorted, l),
        None => 0,
    };
    let c = first_above(sorted, label).saturating_sub(below);
    if shape.leave_one_out {
        c.saturating_sub(1)
    } else {
        c
    }
}

/// The number of leading elements of the ascending `sorted` that are at most `v`.
fn first_above(sorted: &[u32], v: u32) -> usize {
    let (mut lo, mut hi) = (0, sorted.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match sorted.get(mid) {
            Some(&x) if x <= v => lo = mid + 1,
            _ => hi = mid,
        }
    }
    lo
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

/// The workspace of the fast pass, split.
struct Parts<'w> {
    r_norms: &'w mut [f32],
    q_norms: &'w [f32],
    /// The heap sizes of the k-NN pass, one per query.
    lens: &'w mut [u32],
    /// The streaming pass's tile and packing.
    scan: &'w mut [f32],
    rest: &'w mut [f32],
}

/// Splits the workspace of the fast pass into reference norms, query norms, the scan's
/// scratch and the rest, computing the norm terms of the ranking metric (squared norms,
/// or clamped norms for cosine); the references' only unless `lazy` (the search then
/// computes them block by block).
fn prepare<'w>(
    backend: Backend,
    queries: Matrix<'_>,
    shape: Shape<'_>,
    metric: Metric,
    lazy: bool,
    workspace: &'w mut [f32],
) -> Option<Parts<'w>> {
    let (n, m, d) = (queries.rows(), shape.refs.rows(), queries.dim());
    let mut ws = Carve::new(workspace);
    let r_norms = ws.take(m).ok()?;
    let q_norms = ws.take(n).ok()?;
    let lens = ws.take_u32(n).ok()?;
    let scan = ws.take(stream_len(n, m, d) - 2 * n - m).ok()?;
    if n < SMALL_BLOCK && metric != Metric::Cosine {
        // Fewer queries than a tile takes: every distance is direct, and the Euclidean
        // norm terms (read only by the tile's rejection bar) would cost a pass over the
        // references for nothing.
        return Some(Parts {
            r_norms,
            q_norms,
            lens,
            scan,
            rest: ws.rest(),
        });
    }
    if !lazy || shape.leave_one_out {
        metric_norms(backend, &shape.refs, metric, r_norms);
    }
    if shape.leave_one_out {
        for (q, r) in q_norms.iter_mut().zip(r_norms.iter()) {
            *q = *r;
        }
    } else {
        metric_norms(backend, &queries, metric, q_norms);
    }
    Some(Parts {
        r_norms,
        q_norms,
        lens,
        scan,
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
/// of at most 128 and references in blocks of at most 512. For each (query block,
/// reference block) pair the packed, register-blocked distance microkernel of
/// [`crate::cross_distances`] computes the Gram-form tile (`|a|^2 + |b|^2 - 2 <a, b>`, or
/// `1 - <a, b> / (|a| |b|)`; at most 128 x 512 values, in the workspace). Each query then
/// scans its row of the tile against a bar: the farthest distance its bounded max-heap
/// keeps, plus the largest gap the Gram form and the direct form can have between them
/// (`(5 d + 16) 2^-24 (|a|^2 + max |b|^2)` for the Euclidean metrics, `(5 d + 32) 2^-24`
/// for cosine, from the bounds of [`crate::DistanceMode`]). Sixteen candidates at a time
/// are rejected by one vector compare; a candidate at or below the bar (or NaN) is
/// recomputed pair by pair in the direct form and offered to the heap, which keeps direct
/// distances only. A rejected candidate is provably not nearer, in the direct form, than
/// the farthest kept one, and the heap orders equal distances by index, so the heaps end
/// exactly as a pair-by-pair direct search leaves them: the same neighbours, the same
/// distances, bit for bit, at the cost of the Gram tile plus the few direct distances
/// that fill or improve a heap. In a query's first reference block (its heap not full
/// yet) the row is swept twice: first the candidates whose tile values are not above a
/// bound on the block's `k`-th smallest value, which fill the heap with the `k` nearest
/// by value, then the rest against that heap's bar, so the heap does not fill with
/// whichever candidates come first only to improve on them one direct distance at a
/// time. After the last reference block each heap is sorted in
/// place (heapsort), nearest first. Query blocks of fewer than 4 rows skip the tile (a
/// register tile would be mostly padding) and compute every distance directly.
///
/// **The bf16 filter.** On the AVX-512 backend of a CPU with AVX512_BF16 (`vdpbf16ps`,
/// twice the multiply-add rate of `f32`), the rejection tile is computed from the rows
/// rounded to bf16 (to nearest even; products summed in `f32`), with a bar widened by
/// the rounding: `(2^-7 + 2^-15 + (6 d + 16) 2^-24) (|a|^2 + max |b|^2)` for the Euclidean
/// metrics (plus the underflow terms), `2^-7 + 2^-15 + (5 d + 32) 2^-24` for cosine.
/// Once every heap of a query block is full, the tile is not stored at all: each row's
/// bar at the start of the reference block is compared in registers and only a bit mask
/// of the kept candidates is written. Rows with an element of magnitude above `2^60` or
/// below `2^-100` (zero aside), or a non-finite one, make their block use the `f32` tile.
/// The filter changes which candidates are recomputed, never the result: the lists are
/// those of the direct search on the same backend, bit for bit.
///
/// **The int8 filter.** Where the CPU also has AVX512_VNNI (`vpdpbusd`, four int8
/// products per lane: twice the bf16 rate), and `11 <= d <= 4096` (below, its packing
/// would not fit the bf16 filter's workspace), a search whose references are packed per
/// call (`knn`, [`retrieval_metrics`], a gallery prepared without its bf16 copy) takes
/// the rejection tile from int8 rows instead. Each row `x` (for cosine `x / |x|`) gets
/// the scale `s = max |x_k| / 127` and the codes `q_k = round(x_k / s)`; the packing
/// measures the residual `eps >= |x - s q|` of every row (its `f32` sum of squares,
/// widened for its own rounding), and since `<a, b> - s_a s_b <q_a, q_b> = <e_a, b> +
/// <s_a q_a, e_b>`, the gap is at most `eps_a max |b| + (|a| + eps_a) eps_b` (twice that
/// for the Euclidean metrics; `eps_a + (1 + eps_a) eps_b` for cosine; the maximum over
/// the reference block): the tile lowers each value by its column's share
/// `(|a| + eps_a) eps_b` and the bar is widened by the row's share, on top of the `f32`
/// gap. The codes' products are
/// summed exactly in `i32`. A row with a non-finite element, a largest magnitude outside
/// `[2^-60, 2^60]` (zero aside) or a non-finite norm gets NaN filter values (always
/// recomputed). As with bf16, the lists are those of the direct search, bit for bit.
/// Against a gallery, each reference block's norms are computed just before the block is
/// packed, while its rows are in cache; for the Euclidean metrics, by the packing itself,
/// in the pass that finds each row's largest magnitude (the first pass over the block's
/// memory, which also prefetches the rows ahead).
///
/// - `knn` keeps its heaps in the caller's `indices` and `distances` rows, with the
///   reference blocks outermost: each block of the gallery is read from memory once and
///   stays in cache while every query block passes over it.
/// - [`retrieval_metrics`] needs, for a query whose label has `R` other occurrences among
///   the references, its `max(R, K)` nearest neighbours; `R` varies per query and can be
///   as large as `m`. It sorts a copy of the reference labels once (radix sort), counts
///   `R` for the next queries by binary search in it (no distance), and packs consecutive
///   queries into a block while the heaps of those with `R >= 1` fit together in a pool
///   of `2 m` (distance, index) slots of the workspace; one query always fits, since
///   `max(R, K) <= m`, and a full block of 128 whenever their lists average at most
///   `m / 64`. Each block streams the whole reference set.
///
/// The workspace queries ([`knn_workspace_len`], [`retrieval_metrics_workspace_len`])
/// return exactly what the fast pass needs; the scalar twins need `4 m + 1` (one `f64`
/// distance and index per reference), given by [`crate::scalar::knn_workspace_len`] and
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
/// The distances returned (and ranked) are those of the direct form, pair by pair (as
/// [`crate::DistanceMode::Direct`], not the Gram form of [`crate::cross_distances`],
/// which only serves to reject candidates; see the streaming design):
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
    let rank = Rank::of(metric);
    // A gallery's norm terms are computed block by block, each just before the block is
    // packed and searched (while its rows are in cache): one pass over the gallery's
    // memory instead of two.
    let lazy = !shape.leave_one_out;
    // Unreachable `else`: the workspace length was checked.
    let Some(Parts {
        r_norms,
        q_norms,
        lens,
        scan,
        ..
    }) = prepare(backend, queries, shape, rank.norm_metric(), lazy, workspace)
    else {
        return Ok(());
    };
    if lazy {
        search::knn_by_blocks(
            backend, rank, queries, shape, q_norms, r_norms, k, indices, distances, lens, scan,
        );
    } else {
        let stream = Stream {
            backend,
            rank,
            queries,
            shape,
            q_norms,
            r_norms,
            r_packed: None,
        };
        stream.knn(k, indices, distances, lens, scan);
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
    let (shape, ref_labels) = check_metrics(
        &queries,
        labels,
        reference,
        Cutoffs::One(k),
        workspace.len(),
        false,
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

/// [`retrieval_metrics`] with recall at several cut-offs: `recall_at[i]` is recall@`ks[i]`,
/// all of them (and the other metrics) from one ranking per query. The name reads
/// "retrieval metrics at these K": the one kernel for an evaluation that reports
/// recall@1, recall@5 and recall@10, say, without ranking every query three times.
///
/// For a query with `R >= 1` same-label references, let `f` be the rank (1-based) of its
/// nearest same-label reference; then for every `K` of `ks`,
///
/// `recall_at[i] = (number of evaluated queries with f <= ks[i]) / evaluated`,
///
/// and `precision_at_1`, `r_precision`, `mean_average_precision_at_r` and `evaluated` are
/// those of [`retrieval_metrics`] (see [`RetrievalMetrics`]). The returned
/// [`RetrievalMetrics::recall_at_k`] is the recall at the largest `K` of `ks`; with `ks =
/// [k]` the result is [`retrieval_metrics`]'s with that `k`, bit for bit, and
/// `recall_at[i]` equals `retrieval_metrics(.., ks[i], ..).recall_at_k` bit for bit for
/// every `i`. Each query's `max(R, max K)` nearest neighbours are selected by the same
/// streaming pass as [`retrieval_metrics`]'s, so the cost is that of one call with the
/// largest `K`, not one per `K`. `ks` may list the cut-offs in any order, repeats
/// included. Scalar twin: [`crate::scalar::retrieval_metrics_at`].
///
/// `recall_at` has exactly one element per `K` and is fully overwritten on success.
/// `workspace` needs [`retrieval_metrics_workspace_len`]`(n, m, d)` elements (`m = n`
/// leave-one-out), as [`retrieval_metrics`]; its contents are garbage before and after.
/// On `Err` nothing is written.
///
/// # Errors
///
/// Those of [`retrieval_metrics`], in the same order, with the cut-offs checked where it
/// checks `k`:
///
/// - [`Error::InvalidParameter`] (`"ks"`) when `ks` is empty or one of its `K` is 0 or
///   exceeds the references a query can retrieve (`m`, or `n - 1` leave-one-out);
/// - [`Error::LengthMismatch`] (`"recall_at"`) when `recall_at.len() != ks.len()`.
///
/// # Numerics
///
/// As [`retrieval_metrics`]: exact per-query values accumulated in `f64` in query order.
///
/// # Example
///
/// ```
/// use triplet_kernels::{retrieval_metrics_at, retrieval_metrics_workspace_len, Matrix, Metric};
/// // Query 0's ranking: labels 2, 2, 1 (its only same-label reference is third).
/// let q = Matrix::new(&[0.0, 100.0], 2, 1)?;
/// let y = Matrix::new(&[1.0, 2.0, 3.0, 99.0], 4, 1)?;
/// let mut recall = [0.0; 3];
/// let mut ws = [0.0_f32; retrieval_metrics_workspace_len(2, 4, 1)];
/// let y_labels = [2, 2, 1, 5];
/// let m = retrieval_metrics_at(q, &[1, 5], Some((y, &y_labels)), Metric::Euclidean, &[1, 2, 3], &mut recall, &mut ws)?;
/// // Query 1 (label 5) finds its one reference first; query 0 only at rank 3.
/// assert_eq!(recall, [0.5, 0.5, 1.0]);
/// assert_eq!((m.precision_at_1, m.recall_at_k), (0.5, 1.0));
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
        false,
    )?;
    Ok(evaluate(
        queries, labels, shape, ref_labels, metric, ks, recall_at, workspace,
    ))
}

/// The fast pass of [`retrieval_metrics`] and [`retrieval_metrics_at`], arguments checked:
/// the metrics, with recall at each of `ks` in `recall` (`ks.len()` elements).
#[allow(clippy::too_many_arguments)]
fn evaluate(
    queries: Matrix<'_>,
    labels: &[u32],
    shape: Shape<'_>,
    ref_labels: &[u32],
    metric: Metric,
    ks: &[usize],
    recall: &mut [f64],
    workspace: &mut [f32],
) -> RetrievalMetrics {
    for v in recall.iter_mut() {
        *v = 0.0;
    }
    let k = largest(ks);
    // Read once: the norms and every distance of this call use it.
    let backend = Backend::active();
    let m = shape.refs.rows();
    // The `else` branches below are unreachable: the workspace length was checked, and an
    // `f32` slice always reinterprets as `u32`.
    let Some(Parts {
        r_norms,
        q_norms,
        scan,
        rest,
        ..
    }) = prepare(
        backend,
        queries,
        shape,
        Rank::of(metric).norm_metric(),
        false,
        workspace,
    )
    else {
        return RetrievalMetrics::ZERO;
    };
    let mut pool = Carve::new(rest);
    let slots = m.saturating_mul(POOL_SLOTS);
    let (Ok(pool_d), Ok(pool_i), Ok(sorted)) =
        (pool.take(slots), pool.take_u32(slots), pool.take_u32(m))
    else {
        return RetrievalMetrics::ZERO;
    };
    // The reference labels, sorted (the pool's index half as scratch): each query's `R`
    // by two binary searches instead of a pass over the labels.
    for (s, &l) in sorted.iter_mut().zip(ref_labels) {
        *s = l;
    }
    radix_sort(sorted, pool_i);
    let sorted: &[u32] = sorted;
    let stream = Stream {
        backend,
        rank: Rank::of(metric),
        queries,
        shape,
        q_norms,
        r_norms,
        r_packed: None,
    };
    let mut sums = MetricSums::default();
    let mut next = 0;
    let mut rs = [0_usize; QUERY_BLOCK];
    while next < labels.len() {
        // A block of consecutive queries (the tile's rows), from the next one with R >= 1,
        // while the heaps of those with R >= 1 fit in the pool together; the others in
        // the block get no heap.
        let mut heaps: [Heap<'_>; QUERY_BLOCK] = core::array::from_fn(|_| Heap::empty());
        let mut free_d: &mut [f32] = &mut *pool_d;
        let mut free_i: &mut [u32] = &mut *pool_i;
        let mut q0 = next;
        let mut count = 0;
        let mut held = 0;
        while count < QUERY_BLOCK {
            let Some(&label) = labels.get(next) else {
                break;
            };
            let r = same_label_count(&shape, label, sorted);
            if r == 0 && count == 0 {
                next += 1;
                q0 = next;
                continue;
            }
            let cap = if r == 0 { 0 } else { max_len(r, k) };
            if cap > free_d.len() && held > 0 {
                break;
            }
            let cap = min_len(cap, free_d.len());
            let (d, rest_d) = free_d.split_at_mut(cap);
            let (i, rest_i) = free_i.split_at_mut(min_len(cap, free_i.len()));
            (free_d, free_i) = (rest_d, rest_i);
            if let (Some(h), Some(rr)) = (heaps.get_mut(count), rs.get_mut(count)) {
                *h = Heap::new(d, i);
                *rr = r;
            }
            held += usize::from(r > 0);
            count += 1;
            next += 1;
        }
        if held == 0 {
            break;
        }
        let heaps = heaps.get_mut(..count).unwrap_or_default();
        stream.scan(q0, heaps, scan);
        for ((q, &r), heap) in (q0..).zip(rs.iter()).zip(heaps.iter()) {
            if r == 0 {
                continue;
            }
            let label = labels.get(q).copied().unwrap_or_default();
            let matches = heap
                .idx
                .iter()
                .map(|&j| ref_labels.get(j as usize).is_some_and(|&l| l == label));
            sums.add(r, ks, recall, matches);
        }
    }
    sums.finish(ks, recall)
}
