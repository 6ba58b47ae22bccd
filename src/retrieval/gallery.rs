//! A gallery prepared once for repeated searches: rows, norms and metric.

use super::bf16::{self, Packed};
use super::search::{stream_len, Rank, Stream};
use super::{check_refs, K_EXPECTED};
use crate::distance::{metric_norms, Metric};
use crate::error::Error;
use crate::math;
use crate::matrix::Matrix;
use crate::simd::Backend;
use crate::validate::{check_finite, check_len, check_workspace, checked_area};
use crate::workspace::Carve;

/// How [`knn_gallery`] ranks a prepared gallery; each variant gives its distance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SearchMetric {
    /// `sum (a_i - b_i)^2`.
    SquaredEuclidean,
    /// `sqrt(sum (a_i - b_i)^2)`.
    Euclidean,
    /// `1 - <a, b> / (max(|a|, eps) max(|b|, eps))`, `eps` = [`crate::NORM_EPS`].
    Cosine,
    /// `-<a, b>`: maximum inner product search, the largest inner product ranking first
    /// (negate the returned distances for the inner products). For embeddings that are
    /// already unit-norm (where it ranks as cosine does, without the norms) or trained
    /// with dot-product scores.
    InnerProduct,
}

impl From<Metric> for SearchMetric {
    fn from(metric: Metric) -> Self {
        match metric {
            Metric::SquaredEuclidean => SearchMetric::SquaredEuclidean,
            Metric::Euclidean => SearchMetric::Euclidean,
            Metric::Cosine => SearchMetric::Cosine,
        }
    }
}

impl SearchMetric {
    fn rank(self) -> Rank {
        match self {
            SearchMetric::SquaredEuclidean | SearchMetric::Euclidean => Rank::Sq,
            SearchMetric::Cosine => Rank::Cosine,
            SearchMetric::InnerProduct => Rank::NegDot,
        }
    }
}

/// An enrolled gallery: its rows, the norm terms its metric needs (computed once by
/// [`prepare_gallery`]), and the metric. Searching it with [`knn_gallery`] costs nothing
/// per call for the gallery's norms. Borrows the rows and the norms buffer, so neither
/// can change while it lives.
#[derive(Clone, Copy, Debug)]
pub struct Gallery<'a> {
    rows: Matrix<'a>,
    norms: &'a [f32],
    metric: SearchMetric,
    /// The rows packed for the bf16 filter ([`prepare_gallery_filtered`]).
    filter: Option<Packed<'a>>,
}

impl<'a> Gallery<'a> {
    /// The gallery's rows.
    pub fn rows(&self) -> Matrix<'a> {
        self.rows
    }

    /// The metric it was prepared for.
    pub fn metric(&self) -> SearchMetric {
        self.metric
    }

    /// Whether searches read the filter copy of [`prepare_gallery_filtered`] on this CPU
    /// and backend: the gallery holds one (its rows were within the filter's range) and
    /// the active backend has the bf16 dot product (AVX-512 BF16). A query block with an
    /// element outside that range (or NaN) still takes the direct form for that call.
    pub fn filtered(&self) -> bool {
        self.filter.is_some() && crate::simd::has_bf16_tile(Backend::active())
    }
}

/// Elements of the norms buffer of [`prepare_gallery`] for a gallery of `rows` rows: one
/// per row.
pub const fn gallery_norms_len(rows: usize) -> usize {
    rows
}

/// Prepares the gallery `rows` (`m x d`) for repeated [`knn_gallery`] searches under
/// `metric`: checks it once and computes each row's norm term into `norms` (the squared
/// norm for the Euclidean metrics, the clamped norm `max(|b|, eps)` for cosine and for
/// the inner product's error bound), which the returned [`Gallery`] borrows.
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"norms"`) when `norms` does not have
///   [`gallery_norms_len`]`(m)` elements;
/// - [`Error::IndexOutOfRange`] (`"reference"`) when the gallery has more than `u32::MAX`
///   rows;
/// - [`Error::NonFinite`] (`"gallery"`, row and column of the first one) when a row holds
///   NaN or infinity: an enrolled row that can never be found is a bug to report at
///   enrolment, not a result to rank last at every search.
///
/// # Example
///
/// ```
/// use triplet_kernels::{knn_gallery, knn_gallery_workspace_len, prepare_gallery};
/// use triplet_kernels::{Matrix, SearchMetric};
/// let enrolled = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
/// let mut norms = [0.0_f32; 3];
/// let gallery = prepare_gallery(Matrix::new(&enrolled, 3, 2)?, SearchMetric::Cosine, &mut norms)?;
/// // Every later search reuses the norms.
/// let mut idx = [0_u32; 2];
/// let mut dist = [0.0_f32; 2];
/// let mut ws = [0.0_f32; knn_gallery_workspace_len(1, 3, 2)];
/// knn_gallery(Matrix::new(&[0.0, 2.0], 1, 2)?, &gallery, 2, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!(idx, [1, 2]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn prepare_gallery<'a>(
    rows: Matrix<'a>,
    metric: SearchMetric,
    norms: &'a mut [f32],
) -> Result<Gallery<'a>, Error> {
    check_len("norms", gallery_norms_len(rows.rows()), norms.len())?;
    check_refs(&rows, Some(rows))?;
    check_finite("gallery", rows.as_slice(), rows.dim())?;
    let backend = Backend::active();
    metric_norms(backend, &rows, metric.rank().norm_metric(), norms);
    Ok(Gallery {
        rows,
        norms,
        metric,
        filter: None,
    })
}

/// Elements of the filter buffer of [`prepare_gallery_filtered`] for a gallery of `rows`
/// rows of dimension `dim`: the rows rounded to bf16, two per `f32` word, in panels of 16
/// rows (`ceil(rows / 16) 16 ceil(dim / 2)` words), plus one term per packed row; about
/// half the gallery's own size. Saturates instead of overflowing.
pub const fn gallery_filter_len(rows: usize, dim: usize) -> usize {
    bf16::pack_len(rows, dim)
}

/// [`prepare_gallery`], also writing a filter copy of the gallery into `filter`: its rows
/// rounded to bf16 and packed for the search's rejection pass. On CPUs with the AVX-512
/// BF16 dot product, [`knn_gallery`] then computes the rejection values from this copy
/// (half the bytes of the rows, at twice the `f32` multiply-add rate) for every block of
/// queries, including single queries, which otherwise compute every distance in the
/// direct form: a search for one query reads about half the memory. Every candidate the
/// filter keeps is still recomputed in the direct form from the `f32` rows, so the
/// results are those of [`prepare_gallery`]'s gallery, bit for bit.
///
/// The copy is unused (and the search that of [`prepare_gallery`]) on other CPUs and
/// backends, or when an element's magnitude lies outside `[2^-100, 2^60]` (zero
/// allowed), where bf16 products could underflow or overflow;
/// [`Gallery::filtered`] tells which.
///
/// # Errors
///
/// Those of [`prepare_gallery`], and [`Error::LengthMismatch`] (`"filter"`) when `filter`
/// does not have [`gallery_filter_len`]`(m, d)` elements (checked after `norms`).
///
/// # Example
///
/// ```
/// use triplet_kernels::{gallery_filter_len, knn_gallery, knn_gallery_workspace_len};
/// use triplet_kernels::{prepare_gallery, prepare_gallery_filtered, Matrix, SearchMetric};
/// let enrolled: Vec<f32> = (0..40 * 8).map(|i| ((i * 29 % 23) as f32 - 11.0) / 4.0).collect();
/// let rows = Matrix::new(&enrolled, 40, 8)?;
/// let mut norms = vec![0.0_f32; 40];
/// let mut filter = vec![0.0_f32; gallery_filter_len(40, 8)];
/// let g = prepare_gallery_filtered(rows, SearchMetric::Cosine, &mut norms, &mut filter)?;
/// let q = Matrix::new(&enrolled[8..16], 1, 8)?;
/// let (mut idx, mut dist) = ([0_u32; 3], [0.0_f32; 3]);
/// let mut ws = vec![0.0_f32; knn_gallery_workspace_len(1, 40, 8)];
/// knn_gallery(q, &g, 3, &mut idx, &mut dist, &mut ws)?;
/// // The same neighbours and distances as without the filter.
/// let mut norms2 = vec![0.0_f32; 40];
/// let plain = prepare_gallery(rows, SearchMetric::Cosine, &mut norms2)?;
/// let (mut idx2, mut dist2) = ([0_u32; 3], [0.0_f32; 3]);
/// knn_gallery(q, &plain, 3, &mut idx2, &mut dist2, &mut ws)?;
/// assert_eq!((idx, dist), (idx2, dist2));
/// assert_eq!(idx[0], 1);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn prepare_gallery_filtered<'a>(
    rows: Matrix<'a>,
    metric: SearchMetric,
    norms: &'a mut [f32],
    filter: &'a mut [f32],
) -> Result<Gallery<'a>, Error> {
    let (m, d) = (rows.rows(), rows.dim());
    check_len("norms", gallery_norms_len(m), norms.len())?;
    check_len("filter", gallery_filter_len(m, d), filter.len())?;
    let mut g = prepare_gallery(rows, metric, norms)?;
    let backend = Backend::active();
    g.filter = bf16::pack(
        backend,
        metric.rank(),
        rows.as_slice(),
        d,
        m,
        g.norms,
        filter,
    );
    Ok(g)
}

/// Workspace elements that [`knn_gallery`] needs for `queries` queries against a prepared
/// gallery of `references` rows of dimension `dim`: those of [`super::knn_workspace_len`]
/// less the gallery's norms (`references`). Saturates instead of overflowing.
pub const fn knn_gallery_workspace_len(queries: usize, references: usize, dim: usize) -> usize {
    stream_len(queries, references, dim).saturating_sub(references)
}

/// The `k` nearest rows of a prepared [`Gallery`] for every query, as [`super::knn`]
/// finds them against a gallery (same streaming search, ranking, ties and numerics), by
/// the gallery's [`SearchMetric`], reading the norms prepared once instead of computing
/// the gallery's for every call. `indices[i * k + t]` and `distances[i * k + t]` are query
/// `i`'s `t`-th nearest row and its distance, nearest first; for
/// [`SearchMetric::InnerProduct`] the distance is `-<a, b>` (largest inner product
/// first), computed as a sum of products, within `(d + 2) 2^-24 sum |a_i b_i|` of the
/// exact one.
///
/// `indices` and `distances` have exactly `n * k` elements and are fully overwritten.
/// `workspace` needs [`knn_gallery_workspace_len`]`(n, m, d)` elements; its contents are
/// garbage before and after. Scalar twin: [`crate::scalar::knn_gallery`].
///
/// # Errors
///
/// - [`Error::DimensionMismatch`] when the gallery has another dimension than `queries`;
/// - [`Error::InvalidParameter`] (`"k"`) when `k == 0` or `k > m`;
/// - [`Error::ShapeOverflow`] when `n * k` overflows `usize`;
/// - [`Error::LengthMismatch`] (`"indices"`, `"distances"`) when an output does not have
///   `n * k` elements;
/// - [`Error::WorkspaceTooSmall`] when the workspace is too short.
///
/// # Example
///
/// ```
/// use triplet_kernels::{knn_gallery, knn_gallery_workspace_len, prepare_gallery};
/// use triplet_kernels::{Matrix, SearchMetric};
/// // Maximum inner product search.
/// let enrolled = [1.0, 0.0, 2.0, 2.0, 0.0, 3.0];
/// let mut norms = [0.0_f32; 3];
/// let g = prepare_gallery(Matrix::new(&enrolled, 3, 2)?, SearchMetric::InnerProduct, &mut norms)?;
/// let mut idx = [0_u32; 3];
/// let mut dist = [0.0_f32; 3];
/// let mut ws = [0.0_f32; knn_gallery_workspace_len(1, 3, 2)];
/// knn_gallery(Matrix::new(&[1.0, 1.0], 1, 2)?, &g, 3, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!(idx, [1, 2, 0]);
/// assert_eq!(dist, [-4.0, -3.0, -1.0]);
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
    let shape = check_refs(&queries, Some(gallery.rows))?;
    let (n, m, d) = (queries.rows(), gallery.rows.rows(), queries.dim());
    if k == 0 || k > m {
        return Err(Error::InvalidParameter {
            name: "k",
            expected: K_EXPECTED,
        });
    }
    let len = checked_area(n, k)?;
    check_len("indices", len, indices.len())?;
    check_len("distances", len, distances.len())?;
    check_workspace(knn_gallery_workspace_len(n, m, d), workspace.len())?;
    let backend = Backend::active();
    let rank = gallery.metric.rank();
    let mut ws = Carve::new(workspace);
    // Unreachable `else`: the workspace length was checked.
    let (Ok(q_norms), Ok(lens)) = (ws.take(n), ws.take_u32(n)) else {
        return Ok(());
    };
    let scan = ws.rest();
    metric_norms(backend, &queries, rank.norm_metric(), q_norms);
    let stream = Stream {
        backend,
        rank,
        queries,
        shape,
        q_norms,
        r_norms: gallery.norms,
        r_packed: gallery.filter,
    };
    stream.knn(k, indices, distances, lens, scan);
    if gallery.metric == SearchMetric::Euclidean {
        for v in distances.iter_mut() {
            *v = math::sqrt(*v);
        }
    }
    Ok(())
}
