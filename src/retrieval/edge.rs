//! k-NN over galleries stored in the edge formats (f16, bf16, int8, sign bits).

use super::gallery::SearchMetric;
use super::heap::Heap;
use super::quant::{binarize_row, binary_row_words, widen, BinaryMatrix, EdgeData, EdgeMatrix};
use super::search::{finish, stream_len, Rank, Stream, REFERENCE_BLOCK, SMALL_BLOCK};
use super::{Shape, K_EXPECTED};
use crate::distance::{metric_norms, NORM_EPS};
use crate::error::Error;
use crate::math;
use crate::matrix::Matrix;
use crate::simd::{
    self, Backend, I8Epilogue, I8Tile, Kernel, Simd, WideBf16, WideF16, WideF32, WideI8, Widen,
};
use crate::validate::{check_len, check_workspace, checked_area};
use crate::workspace::{min_len, Carve};
use core::num::NonZeroUsize;

/// An enrolled gallery in a compact format: its rows ([`EdgeMatrix`]), the norm terms of
/// their dequantized values (computed once by [`prepare_edge_gallery`]) and the metric.
/// Borrows the rows and the norms.
#[derive(Clone, Copy, Debug)]
pub struct EdgeGallery<'a> {
    rows: EdgeMatrix<'a>,
    norms: &'a [f32],
    metric: SearchMetric,
}

impl<'a> EdgeGallery<'a> {
    /// The gallery's rows.
    pub fn rows(&self) -> EdgeMatrix<'a> {
        self.rows
    }

    /// The metric it was prepared for.
    pub fn metric(&self) -> SearchMetric {
        self.metric
    }
}

/// Workspace elements of [`prepare_edge_gallery`] for rows of dimension `dim`: `dim`
/// (more is used, up to 64 rows at a time).
pub const fn prepare_edge_gallery_workspace_len(dim: usize) -> usize {
    dim
}

/// Largest `|code|` times a scale may reach without overflowing `f32` (`128` covers a
/// caller's `-128`).
const CODE_BOUND: f32 = 128.0;

/// Prepares a gallery stored in a compact format for repeated [`knn_edge`] (and, for
/// int8, [`knn_edge_i8`]) searches under `metric`: checks it once and computes the norm
/// term of every dequantized row into `norms` (as [`super::prepare_gallery`] does for
/// `f32` rows: the squared norm for the Euclidean metrics, the clamped norm otherwise).
///
/// `norms` has [`super::gallery_norms_len`]`(rows)` elements; `workspace` at least
/// [`prepare_edge_gallery_workspace_len`]`(dim)` (rows are dequantized into it a block at
/// a time).
///
/// # Errors
///
/// - [`Error::LengthMismatch`] (`"norms"`);
/// - [`Error::IndexOutOfRange`] (`"reference"`) for more than `u32::MAX` rows;
/// - [`Error::WorkspaceTooSmall`];
/// - [`Error::NonFinite`] (`"gallery"`, row and column) at the first element whose value
///   is NaN or infinite (f16 or bf16 bits of one);
/// - [`Error::TooLarge`] (`"scales"`, the row, column 0) for an int8 scale whose product
///   with a code could overflow `f32` (`128 s` not finite).
///
/// # Example
///
/// ```
/// use triplet_kernels::{knn_edge, knn_edge_workspace_len, prepare_edge_gallery, quantize_f16};
/// use triplet_kernels::{EdgeMatrix, Matrix, SearchMetric};
/// let enrolled = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
/// let mut bits = [0_u16; 6];
/// quantize_f16(Matrix::new(&enrolled, 3, 2)?, &mut bits)?;
/// let mut norms = [0.0_f32; 3];
/// let mut ws = [0.0_f32; 2];
/// let g = prepare_edge_gallery(EdgeMatrix::f16(&bits, 3, 2)?, SearchMetric::Cosine, &mut norms, &mut ws)?;
/// let (mut idx, mut dist) = ([0_u32; 2], [0.0_f32; 2]);
/// let mut ws = [0.0_f32; knn_edge_workspace_len(1, 3, 2)];
/// knn_edge(Matrix::new(&[0.0, 2.0], 1, 2)?, &g, 2, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!(idx, [1, 2]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn prepare_edge_gallery<'a>(
    rows: EdgeMatrix<'a>,
    metric: SearchMetric,
    norms: &'a mut [f32],
    workspace: &mut [f32],
) -> Result<EdgeGallery<'a>, Error> {
    let (m, d) = (rows.rows(), rows.dim());
    check_len("norms", m, norms.len())?;
    check_rows(m)?;
    check_workspace(prepare_edge_gallery_workspace_len(d), workspace.len())?;
    check_values(&rows)?;
    let backend = Backend::active();
    let per = (workspace.len() / d.max(1)).clamp(1, 64);
    let mut r0 = 0;
    while r0 < m {
        let r1 = min_len(m, r0 + per);
        let (Some(block), Some(buf), Some(out)) = (
            rows.sub_rows(r0, r1),
            workspace.get_mut(..(r1 - r0) * d),
            norms.get_mut(r0..r1),
        ) else {
            break;
        };
        widen(backend, &block, buf);
        if let Ok(x) = Matrix::new(buf, r1 - r0, d) {
            metric_norms(backend, &x, metric_rank(metric).norm_metric(), out);
        }
        r0 = r1;
    }
    Ok(EdgeGallery {
        rows,
        norms,
        metric,
    })
}

fn metric_rank(metric: SearchMetric) -> Rank {
    match metric {
        SearchMetric::SquaredEuclidean | SearchMetric::Euclidean => Rank::Sq,
        SearchMetric::Cosine => Rank::Cosine,
        SearchMetric::InnerProduct => Rank::NegDot,
    }
}

/// At most `u32::MAX` rows (indices are `u32`).
pub(crate) fn check_rows(m: usize) -> Result<(), Error> {
    if u32::try_from(m).is_err() {
        return Err(Error::IndexOutOfRange {
            buffer: "reference",
            position: m - 1,
            index: m - 1,
            bound: u32::MAX as usize,
        });
    }
    Ok(())
}

/// Every dequantized value finite (see [`prepare_edge_gallery`]'s errors).
fn check_values(rows: &EdgeMatrix<'_>) -> Result<(), Error> {
    let d = rows.dim().max(1);
    let bad = |p: usize| Error::NonFinite {
        buffer: "gallery",
        row: p / d,
        col: p % d,
    };
    match rows.data {
        EdgeData::F32(x) => match x.iter().position(|v| !v.is_finite()) {
            Some(p) => Err(bad(p)),
            None => Ok(()),
        },
        EdgeData::F16(x) => match x.iter().position(|&h| h & 0x7c00 == 0x7c00) {
            Some(p) => Err(bad(p)),
            None => Ok(()),
        },
        EdgeData::Bf16(x) => match x.iter().position(|&h| h & 0x7f80 == 0x7f80) {
            Some(p) => Err(bad(p)),
            None => Ok(()),
        },
        EdgeData::I8 { scales, .. } => {
            match scales.iter().position(|&s| !(s * CODE_BOUND).is_finite()) {
                Some(row) => Err(Error::TooLarge {
                    buffer: "scales",
                    row,
                    col: 0,
                }),
                None => Ok(()),
            }
        }
    }
}

/// Shared checks of the searches: dimensions, `k`, output lengths; returns `n * k`.
pub(crate) fn check_search(
    n: usize,
    dim: usize,
    gallery_dim: usize,
    m: usize,
    k: usize,
    indices: &[u32],
    distances: &[f32],
) -> Result<usize, Error> {
    if dim != gallery_dim {
        return Err(Error::DimensionMismatch {
            left: dim,
            right: gallery_dim,
        });
    }
    if k == 0 || k > m {
        return Err(Error::InvalidParameter {
            name: "k",
            expected: K_EXPECTED,
        });
    }
    let len = checked_area(n, k)?;
    check_len("indices", len, indices.len())?;
    check_len("distances", len, distances.len())?;
    Ok(len)
}

/// Workspace elements that [`knn_edge`] needs for `queries` queries against a prepared
/// gallery of `references` rows of dimension `dim`: those of
/// [`super::knn_gallery_workspace_len`]`(queries, rb, dim)` plus `rb dim`, with
/// `rb = min(references, 512)` (one reference block, dequantized). Saturates instead of
/// overflowing.
pub const fn knn_edge_workspace_len(queries: usize, references: usize, dim: usize) -> usize {
    let rb = min_len(REFERENCE_BLOCK, references);
    stream_len(queries, rb, dim)
        .saturating_sub(rb)
        .saturating_add(rb.saturating_mul(dim))
}

/// The `k` nearest rows of a gallery stored in a compact format ([`EdgeGallery`]) for
/// every `f32` query, by the gallery's [`SearchMetric`].
///
/// **Semantics.** The result is, bit for bit, that of [`super::knn_gallery`] (same
/// backend) against the gallery's dequantized rows ([`super::dequantize_f16`],
/// [`super::dequantize_bf16`], [`super::dequantize_i8`]): the same neighbours, ties to
/// the smaller index, the same distances, within the bounds documented there of the
/// exact distances to the dequantized rows. How far those rows are from the `f32`
/// embeddings they were quantized from is the format's rounding: a relative `2^-11`
/// (f16) or `2^-8` (bf16) per element, half the row's scale per element (int8).
///
/// **Cost.** Fewer than 4 queries read each row once, in its compact format, widening it
/// in registers (f16 through `vcvtph2ps`, bf16 and int8 by integer widening), so the
/// search reads the gallery's bytes: half (f16, bf16) or a quarter (int8) of the `f32`
/// gallery's. More queries stream the gallery in blocks of 512 rows, each dequantized
/// once into the workspace and searched with the Gram tile and exact selection of
/// [`super::knn`].
///
/// `indices` and `distances` have `n * k` elements and are fully overwritten.
/// `workspace` needs [`knn_edge_workspace_len`]`(n, m, d)` elements. Scalar twin:
/// [`crate::scalar::knn_edge`].
///
/// # Errors
///
/// - [`Error::DimensionMismatch`] when the gallery has another dimension than `queries`;
/// - [`Error::InvalidParameter`] (`"k"`) when `k == 0` or `k > m`;
/// - [`Error::ShapeOverflow`] when `n * k` overflows;
/// - [`Error::LengthMismatch`] (`"indices"`, `"distances"`);
/// - [`Error::WorkspaceTooSmall`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{knn_edge, knn_edge_workspace_len, prepare_edge_gallery, quantize_i8};
/// use triplet_kernels::{EdgeMatrix, Matrix, SearchMetric};
/// let enrolled = [1.0, 0.0, 3.0, 4.0, -1.0, 0.5];
/// let (mut codes, mut scales) = ([0_i8; 6], [0.0_f32; 3]);
/// quantize_i8(Matrix::new(&enrolled, 3, 2)?, &mut codes, &mut scales)?;
/// let mut norms = [0.0_f32; 3];
/// let mut ws = [0.0_f32; 2];
/// let rows = EdgeMatrix::i8(&codes, &scales, 3, 2)?;
/// let g = prepare_edge_gallery(rows, SearchMetric::SquaredEuclidean, &mut norms, &mut ws)?;
/// let (mut idx, mut dist) = ([0_u32; 1], [0.0_f32; 1]);
/// let mut ws = [0.0_f32; knn_edge_workspace_len(1, 3, 2)];
/// knn_edge(Matrix::new(&[2.9, 4.1], 1, 2)?, &g, 1, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!(idx, [1]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn knn_edge(
    queries: Matrix<'_>,
    gallery: &EdgeGallery<'_>,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let rows = gallery.rows;
    let (n, m, d) = (queries.rows(), rows.rows(), queries.dim());
    check_search(n, d, rows.dim(), m, k, indices, distances)?;
    check_workspace(knn_edge_workspace_len(n, m, d), workspace.len())?;
    let backend = Backend::active();
    let rank = metric_rank(gallery.metric);
    let mut ws = Carve::new(workspace);
    let (Ok(q_norms), Ok(lens)) = (ws.take(n), ws.take_u32(n)) else {
        return Ok(());
    };
    let scan = ws.rest();
    metric_norms(backend, &queries, rank.norm_metric(), q_norms);
    if n < SMALL_BLOCK {
        let Some(k) = NonZeroUsize::new(k) else {
            return Ok(());
        };
        for ((i_row, d_row), (a, &na)) in indices
            .chunks_exact_mut(k.get())
            .zip(distances.chunks_exact_mut(k.get()))
            .zip(queries.row_iter().zip(q_norms.iter()))
        {
            let mut heap = Heap::new(d_row, i_row);
            offer_rows(backend, rank, a, na, gallery, None, &mut heap);
            heap.sort();
        }
    } else {
        let rb = min_len(REFERENCE_BLOCK, m);
        let (block, scan) = scan.split_at_mut(min_len(rb * d, scan.len()));
        let (qpack, gpack, scan) = super::search::split_packs(scan, n, m, d);
        for l in lens.iter_mut() {
            *l = 0;
        }
        let packer = Stream {
            backend,
            rank,
            queries,
            shape: Shape {
                refs: queries,
                leave_one_out: false,
                available: m,
            },
            q_norms,
            r_norms: gallery.norms,
            r_packed: None,
        };
        let packed = packer.pack_all_queries(qpack);
        let mut start = 0;
        while start < m {
            let r1 = min_len(m, start + REFERENCE_BLOCK);
            let (Some(src), Some(buf), Some(r_norms)) = (
                rows.sub_rows(start, r1),
                block.get_mut(..(r1 - start) * d),
                gallery.norms.get(start..r1),
            ) else {
                break;
            };
            widen(backend, &src, buf);
            let Ok(refs) = Matrix::new(buf, r1 - start, d) else {
                break;
            };
            let stream = Stream {
                backend,
                rank,
                queries,
                shape: Shape {
                    refs,
                    leave_one_out: false,
                    available: m,
                },
                q_norms,
                r_norms,
                r_packed: None,
            };
            let block = packed.and_then(|q| stream.pack_refs(0, q, &mut *gpack));
            stream.knn_block(k, indices, distances, lens, (0, start), packed, block, scan);
            start = r1;
        }
        finish(k, indices, distances, lens);
    }
    if gallery.metric == SearchMetric::Euclidean {
        for v in distances.iter_mut() {
            *v = math::sqrt(*v);
        }
    }
    Ok(())
}

/// Offers the gallery rows to `heap`, in the direct form, widening each row in
/// registers: every row in order (`only` is `None`), or the listed ones
/// ([`Heap::push_any`]).
fn offer_rows(
    backend: Backend,
    rank: Rank,
    a: &[f32],
    na: f32,
    gallery: &EdgeGallery<'_>,
    only: Option<&[u32]>,
    heap: &mut Heap<'_>,
) {
    let norms = gallery.norms;
    let d = gallery.rows.dim();
    match gallery.rows.data {
        EdgeData::F32(b) => backend.dispatch(Offer::<WideF32> {
            rank,
            a,
            na,
            b,
            scales: &[],
            norms,
            dim: d,
            heap,
            only,
        }),
        EdgeData::F16(b) => backend.dispatch(Offer::<WideF16> {
            rank,
            a,
            na,
            b,
            scales: &[],
            norms,
            dim: d,
            heap,
            only,
        }),
        EdgeData::Bf16(b) => backend.dispatch(Offer::<WideBf16> {
            rank,
            a,
            na,
            b,
            scales: &[],
            norms,
            dim: d,
            heap,
            only,
        }),
        EdgeData::I8 { codes, scales } => backend.dispatch(Offer::<WideI8> {
            rank,
            a,
            na,
            b: codes,
            scales,
            norms,
            dim: d,
            heap,
            only,
        }),
    }
}

/// One query against the rows of a gallery in format `W` (all of them in order, or the
/// listed ones through [`Heap::push_any`]), in the direct form of [`super::search`].
struct Offer<'a, 'h, 's, W: Widen> {
    rank: Rank,
    a: &'a [f32],
    na: f32,
    b: &'a [W::E],
    /// Per-row scales (int8), else empty.
    scales: &'a [f32],
    norms: &'a [f32],
    dim: usize,
    heap: &'h mut Heap<'s>,
    /// Only these rows (a shortlist), else every row.
    only: Option<&'a [u32]>,
}

impl<W: Widen> Kernel for Offer<'_, '_, '_, W> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let Offer {
            rank,
            a,
            na,
            b,
            scales,
            norms,
            dim,
            heap,
            only,
        } = self;
        let Some(dim) = NonZeroUsize::new(dim) else {
            return;
        };
        if let Some(list) = only {
            for &j in list {
                let j = j as usize;
                let (Some(row), Some(&nb)) =
                    (b.get(j * dim.get()..(j + 1) * dim.get()), norms.get(j))
                else {
                    continue;
                };
                let sc = scales.get(j).copied().unwrap_or(0.0);
                heap.push_any(direct_wide::<S, W>(s, rank, a, row, sc, na, nb), j as u32);
            }
            return;
        }
        let mut gate = Gate::new(heap);
        for (j, (row, &nb)) in b.chunks_exact(dim.get()).zip(norms).enumerate() {
            let sc = scales.get(j).copied().unwrap_or(0.0);
            let v = direct_wide::<S, W>(s, rank, a, row, sc, na, nb);
            // `j < m <= u32::MAX`, checked at preparation.
            gate.offer(heap, v, j as u32);
        }
    }
}

/// The test in front of [`Heap::push`], its bar held across the scan: a candidate is
/// pushed when the heap has room, or when it is not at or above the farthest kept
/// distance (NaN included: the heap ranks it).
struct Gate {
    bar: f32,
    full: bool,
}

impl Gate {
    #[inline(always)]
    fn new(heap: &Heap<'_>) -> Self {
        Gate {
            bar: heap.bar(),
            full: heap.len() == heap.dist.len(),
        }
    }

    /// Offers candidate `(v, j)` (indices increasing) to `heap`.
    #[inline(always)]
    fn offer(&mut self, heap: &mut Heap<'_>, v: f32, j: u32) {
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !self.full || !(v >= self.bar) {
            heap.push(v, j);
            self.bar = heap.bar();
            self.full = heap.len() == heap.dist.len();
        }
    }
}

/// [`super::search::direct`] with the reference row in format `W`: bit for bit the value
/// on the dequantized row.
#[inline(always)]
fn direct_wide<S: Simd, W: Widen>(
    s: S,
    rank: Rank,
    a: &[f32],
    b: &[W::E],
    scale: f32,
    na: f32,
    nb: f32,
) -> f32 {
    match rank {
        Rank::Sq => simd::sq_dist_wide::<S, W>(s, a, b, scale),
        Rank::Cosine => 1.0 - simd::dot_wide::<S, W>(s, a, b, scale) / (na * nb),
        Rank::NegDot => -simd::dot_wide::<S, W>(s, a, b, scale),
    }
}

// ---------------------------------------------------------------------------------------
// int8 queries against an int8 gallery.

/// Largest dimension of [`knn_edge_i8`]: `127^2 d` stays below `2^31`.
pub const I8_MAX_DIM: usize = 133_143;

/// Queries per block of the int8 tile.
const I8_QUERY_BLOCK: usize = 128;
/// Rows per panel of the int8 packing.
const PANEL: usize = 16;

/// `f32` words of `rows` int8 rows of dimension `dim` packed in panels of 16 (four codes
/// per word).
const fn i8_pack_len(rows: usize, dim: usize) -> usize {
    rows.div_ceil(PANEL)
        .saturating_mul(PANEL)
        .saturating_mul(dim.div_ceil(4))
}

/// Workspace elements that [`knn_edge_i8`] needs for `queries` int8 queries against
/// `references` int8 rows of dimension `dim`: `3 queries + p(queries) + 4 P(rb) +
/// p(rb) + qb rb + qb (ceil(rb / 16) + 1)` with `qb = min(queries, 128)`, `rb = min(references, 512)`,
/// `P(r) = ceil(r / 16) 16` and `p(r) = P(r) ceil(dim / 4)` (the queries' scale and norm
/// terms, the heap sizes, both packings, the block's column terms, one tile, its bars
/// and bit masks).
/// Saturates instead of overflowing.
pub const fn knn_edge_i8_workspace_len(queries: usize, references: usize, dim: usize) -> usize {
    let qb = min_len(I8_QUERY_BLOCK, queries);
    let rb = min_len(REFERENCE_BLOCK, references);
    queries
        .saturating_mul(3)
        .saturating_add(i8_pack_len(queries, dim))
        .saturating_add(rb.div_ceil(PANEL).saturating_mul(PANEL * 4))
        .saturating_add(i8_pack_len(rb, dim))
        .saturating_add(qb.saturating_mul(rb))
        .saturating_add(qb.saturating_mul(rb.div_ceil(16).saturating_add(1)))
}

/// Per-row factor and term of the int8 distances (see [`knn_edge_i8`]): from the row's
/// scale `s` and the sum of its squared codes `q2`.
#[inline(always)]
fn i8_terms(rank: Rank, s: f32, q2: i32) -> (f32, f32) {
    match rank {
        Rank::Sq => (s, (s * s) * q2 as f32),
        Rank::Cosine => (s / (s * math::sqrt(q2 as f32)).max(NORM_EPS), 0.0),
        Rank::NegDot => (s, 0.0),
    }
}

/// The int8 distance of a pair from its exact integer dot product.
#[inline(always)]
fn i8_value(rank: Rank, fa: f32, ta: f32, fb: f32, tb: f32, dot: i32) -> f32 {
    let x = (fa * fb) * dot as f32;
    match rank {
        Rank::Sq => {
            // As the vector `max(0, y)`: NaN stays NaN.
            let y = (ta + tb) - 2.0 * x;
            if 0.0 > y {
                0.0
            } else {
                y
            }
        }
        Rank::Cosine => 1.0 - x,
        Rank::NegDot => 0.0 - x,
    }
}

/// The `k` nearest rows of an int8 gallery for every int8 query (both as [`quantize_i8`]
/// writes them), by the gallery's [`SearchMetric`], the dot products exact in `i32`.
///
/// With `a = p s_a` and `b = q s_b` (codes `p`, `q`, scales `s_a`, `s_b`) and the exact
/// integers `D = sum p_i q_i`, `P = sum p_i^2`, `Q = sum q_i^2`, each distance is
/// `x = (f_a f_b) D` followed by
///
/// - squared Euclidean: `max(0, (t_a + t_b) - 2 x)` with `f = s`, `t = (s s) P` (and
///   its square root for Euclidean);
/// - cosine: `1 - x` with `f = s / max(s sqrt(P), eps)`, `eps` = [`crate::NORM_EPS`];
/// - inner product: `-x` with `f = s`;
///
/// every operation in `f32` (`D`, `P`, `Q` converted exactly while below `2^24`, i.e.
/// for `dim <= 1040`, rounded once above). Only this final scaling rounds: each
/// distance is within `8 u (|a|^2 + |b|^2)` (squared Euclidean), `16 u` (cosine) or
/// `4 u |a| |b|` (inner product) of the exact distance of the dequantized rows, with
/// `u = 2^-24` (plus terms near the smallest normal number for subnormal scales). The
/// ranking is exact on these values (ties to the smaller index) and the same on every
/// backend, bit for bit: the AVX-512 VNNI kernels (`vpdpbusd`, 64 multiply-adds per
/// instruction: on the rows as stored for fewer than 16 queries, so one query reads the
/// gallery's bytes once; a packed tile from 16 queries up) and the portable integer loop
/// compute the same integers and the same `f32` operations.
///
/// `indices` and `distances` have `n * k` elements and are fully overwritten.
/// `workspace` needs [`knn_edge_i8_workspace_len`]`(n, m, d)` elements. Scalar twin:
/// [`crate::scalar::knn_edge_i8`].
///
/// [`quantize_i8`]: super::quantize_i8
///
/// # Errors
///
/// - [`Error::InvalidParameter`] (`"queries"`) when `queries` is not int8,
///   (`"gallery"`) when the gallery is not int8, (`"dim"`) when `dim >`
///   [`I8_MAX_DIM`];
/// - then those of [`knn_edge`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{knn_edge_i8, knn_edge_i8_workspace_len, prepare_edge_gallery};
/// use triplet_kernels::{quantize_i8, EdgeMatrix, Matrix, SearchMetric};
/// let enrolled = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
/// let (mut codes, mut scales) = ([0_i8; 6], [0.0_f32; 3]);
/// quantize_i8(Matrix::new(&enrolled, 3, 2)?, &mut codes, &mut scales)?;
/// let (mut norms, mut ws) = ([0.0_f32; 3], [0.0_f32; 2]);
/// let rows = EdgeMatrix::i8(&codes, &scales, 3, 2)?;
/// let g = prepare_edge_gallery(rows, SearchMetric::Cosine, &mut norms, &mut ws)?;
/// let (mut qc, mut qs) = ([0_i8; 2], [0.0_f32; 1]);
/// quantize_i8(Matrix::new(&[0.1, 0.9], 1, 2)?, &mut qc, &mut qs)?;
/// let (mut idx, mut dist) = ([0_u32; 2], [0.0_f32; 2]);
/// let mut ws = [0.0_f32; knn_edge_i8_workspace_len(1, 3, 2)];
/// knn_edge_i8(EdgeMatrix::i8(&qc, &qs, 1, 2)?, &g, 2, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!(idx, [1, 2]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn knn_edge_i8(
    queries: EdgeMatrix<'_>,
    gallery: &EdgeGallery<'_>,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (q_codes, q_scales) = i8_parts(&queries, &gallery.rows)?;
    let (g_codes, g_scales) = i8_parts(&gallery.rows, &gallery.rows)?;
    let (n, m, d) = (queries.rows(), gallery.rows.rows(), queries.dim());
    check_search(n, d, gallery.rows.dim(), m, k, indices, distances)?;
    check_workspace(knn_edge_i8_workspace_len(n, m, d), workspace.len())?;
    let backend = Backend::active();
    let rank = metric_rank(gallery.metric);
    let mut ws = Carve::new(workspace);
    let (Ok(fa), Ok(ta), Ok(lens)) = (ws.take(n), ws.take(n), ws.take_u32(n)) else {
        return Ok(());
    };
    for ((row, &s), (f, t)) in q_codes
        .chunks_exact(d)
        .zip(q_scales)
        .zip(fa.iter_mut().zip(ta.iter_mut()))
    {
        (*f, *t) = i8_terms(rank, s, sq_codes(row));
    }
    let queries = I8Side {
        codes: q_codes,
        f: fa,
        t: ta,
    };
    let tile = n >= PANEL && simd::has_i8_tile(backend);
    if tile {
        let scan = ws.rest();
        i8_tiles(
            backend, rank, &queries, gallery, k, indices, distances, lens, scan,
        );
    } else if simd::has_i8_rows(backend) {
        let scan = ws.rest();
        let Ok(qbytes) = bytemuck::try_cast_slice_mut::<f32, u8>(scan) else {
            return Ok(());
        };
        let Some(qbytes) = qbytes.get_mut(..d) else {
            return Ok(());
        };
        i8_rows(
            backend,
            rank,
            &queries,
            (g_codes, g_scales),
            d,
            k,
            indices,
            distances,
            qbytes,
        );
    } else {
        backend.dispatch(I8Direct {
            rank,
            queries,
            g_codes,
            g_scales,
            dim: d,
            k,
            indices: &mut *indices,
            distances: &mut *distances,
        });
    }
    if gallery.metric == SearchMetric::Euclidean {
        for v in distances.iter_mut() {
            *v = math::sqrt(*v);
        }
    }
    Ok(())
}

/// The codes and scales of int8 `queries` and checks that `gallery` is int8 too and the
/// dimension at most [`I8_MAX_DIM`] (the first errors of [`knn_edge_i8`]).
pub(crate) fn i8_parts<'a>(
    queries: &EdgeMatrix<'a>,
    gallery: &EdgeMatrix<'_>,
) -> Result<(&'a [i8], &'a [f32]), Error> {
    let EdgeData::I8 { codes, scales } = queries.data else {
        return Err(Error::InvalidParameter {
            name: "queries",
            expected: "int8 codes (EdgeMatrix::i8)",
        });
    };
    if !matches!(gallery.data, EdgeData::I8 { .. }) {
        return Err(Error::InvalidParameter {
            name: "gallery",
            expected: "an int8 gallery",
        });
    }
    if queries.dim() > I8_MAX_DIM {
        return Err(Error::InvalidParameter {
            name: "dim",
            expected: "<= 133143 (int8 dot products exact in i32)",
        });
    }
    Ok((codes, scales))
}

/// `sum c_i^2`, exact (`127^2 d < 2^31`).
#[inline(always)]
fn sq_codes(row: &[i8]) -> i32 {
    row.iter().map(|&c| i32::from(c) * i32::from(c)).sum()
}

/// The int8 queries and their factors and terms.
struct I8Side<'a> {
    codes: &'a [i8],
    f: &'a [f32],
    t: &'a [f32],
}

/// Every int8 query against every gallery row, integer dot products in plain loops
/// (vectorised by the compiler for the backend).
struct I8Direct<'a, 'o> {
    rank: Rank,
    queries: I8Side<'a>,
    g_codes: &'a [i8],
    g_scales: &'a [f32],
    dim: usize,
    k: usize,
    indices: &'o mut [u32],
    distances: &'o mut [f32],
}

impl Kernel for I8Direct<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, _: S) {
        let (Some(d), Some(k)) = (NonZeroUsize::new(self.dim), NonZeroUsize::new(self.k)) else {
            return;
        };
        let q = &self.queries;
        for (((a, (&fa, &ta)), i_row), d_row) in q
            .codes
            .chunks_exact(d.get())
            .zip(q.f.iter().zip(q.t.iter()))
            .zip(self.indices.chunks_exact_mut(k.get()))
            .zip(self.distances.chunks_exact_mut(k.get()))
        {
            let mut heap = Heap::new(d_row, i_row);
            let mut gate = Gate::new(&heap);
            for (j, (b, &sb)) in self
                .g_codes
                .chunks_exact(d.get())
                .zip(self.g_scales)
                .enumerate()
            {
                let mut dot = 0_i32;
                let mut q2 = 0_i32;
                for (&x, &y) in a.iter().zip(b) {
                    dot += i32::from(x) * i32::from(y);
                    q2 += i32::from(y) * i32::from(y);
                }
                let (fb, tb) = i8_terms(self.rank, sb, q2);
                gate.offer(
                    &mut heap,
                    i8_value(self.rank, fa, ta, fb, tb, dot),
                    j as u32,
                );
            }
            heap.sort();
        }
    }
}

/// Rows scored by one call of [`simd::i8_rows`].
const ROW_BATCH: usize = 64;

/// Every int8 query against every gallery row, the integer sums of each row computed by
/// [`simd::i8_rows`] (AVX-512 VNNI on the rows as stored): one pass over the gallery's
/// bytes per query. `qbytes` (`dim` bytes) holds the query's offset codes.
#[allow(clippy::too_many_arguments)]
fn i8_rows(
    backend: Backend,
    rank: Rank,
    q: &I8Side<'_>,
    gallery: (&[i8], &[f32]),
    d: usize,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
    qbytes: &mut [u8],
) {
    let (g_codes, g_scales) = gallery;
    let (Some(dn), Some(k)) = (NonZeroUsize::new(d), NonZeroUsize::new(k)) else {
        return;
    };
    let m = g_scales.len();
    for (((a, (&fa, &ta)), i_row), d_row) in q
        .codes
        .chunks_exact(dn.get())
        .zip(q.f.iter().zip(q.t.iter()))
        .zip(indices.chunks_exact_mut(k.get()))
        .zip(distances.chunks_exact_mut(k.get()))
    {
        for (b, &c) in qbytes.iter_mut().zip(a) {
            *b = c.cast_unsigned() ^ 0x80;
        }
        let mut heap = Heap::new(d_row, i_row);
        let mut gate = Gate::new(&heap);
        let mut j0 = 0;
        while j0 < m {
            let j1 = min_len(m, j0 + ROW_BATCH);
            let mut sums = [[0_i32; 8]; ROW_BATCH];
            let (Some(rows), Some(scales), Some(out)) = (
                g_codes.get(j0 * d..j1 * d),
                g_scales.get(j0..j1),
                sums.get_mut(..j1 - j0),
            ) else {
                return;
            };
            simd::i8_rows(backend, qbytes, rows, d, out);
            let mut values = [0.0_f32; ROW_BATCH];
            backend.dispatch(I8Values {
                rank,
                fa,
                ta,
                sums: out,
                scales,
                values: &mut values,
            });
            for (t, &v) in values.iter().take(j1 - j0).enumerate() {
                gate.offer(&mut heap, v, (j0 + t) as u32);
            }
            j0 = j1;
        }
        heap.sort();
    }
}

/// The distances of one query to a batch of rows from their integer sums (compiled with
/// the backend's features: the square roots and divisions of cosine vectorise).
struct I8Values<'a, 'o> {
    rank: Rank,
    fa: f32,
    ta: f32,
    /// Four partial sums of the dot product, then four of the squared codes.
    sums: &'a [[i32; 8]],
    scales: &'a [f32],
    values: &'o mut [f32],
}

impl Kernel for I8Values<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let I8Values {
            rank,
            fa,
            ta,
            sums,
            scales,
            values,
        } = self;
        let mut dots = [0.0_f32; ROW_BATCH];
        let mut q2s = [0.0_f32; ROW_BATCH];
        for ((d, q), p) in dots.iter_mut().zip(q2s.iter_mut()).zip(sums) {
            *d = p[0]
                .wrapping_add(p[1])
                .wrapping_add(p[2])
                .wrapping_add(p[3]) as f32;
            *q = p[4]
                .wrapping_add(p[5])
                .wrapping_add(p[6])
                .wrapping_add(p[7]) as f32;
        }
        // `i8_terms` and `i8_value` lane by lane: the same operations in the same order.
        let l = S::LANES;
        let (vfa, vta) = (s.splat(fa), s.splat(ta));
        let (zero, one, two, eps) = (s.zero(), s.splat(1.0), s.splat(2.0), s.splat(NORM_EPS));
        for (((vc, dc), qc), sc) in values
            .chunks_mut(l)
            .zip(dots.chunks(l))
            .zip(q2s.chunks(l))
            .zip(scales.chunks(l))
        {
            let (dot, q2, sb) = (s.load(dc), s.load(qc), s.load(sc));
            let v = match rank {
                Rank::Sq => {
                    let tb = s.mul(s.mul(sb, sb), q2);
                    let x = s.mul(s.mul(vfa, sb), dot);
                    s.max(zero, s.sub(s.add(vta, tb), s.mul(two, x)))
                }
                Rank::Cosine => {
                    let fb = s.div(sb, s.max(s.mul(sb, s.sqrt(q2)), eps));
                    s.sub(one, s.mul(s.mul(vfa, fb), dot))
                }
                Rank::NegDot => s.sub(zero, s.mul(s.mul(vfa, sb), dot)),
            };
            s.store(v, vc);
        }
    }
}

/// The tiled int8 search: reference blocks outermost, each packed once, then every query
/// block's tile and its selection.
#[allow(clippy::too_many_arguments)]
fn i8_tiles(
    backend: Backend,
    rank: Rank,
    q: &I8Side<'_>,
    gallery: &EdgeGallery<'_>,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
    lens: &mut [u32],
    scan: &mut [f32],
) {
    let (m, d) = (gallery.rows.rows(), gallery.rows.dim());
    let n = lens.len();
    let EdgeData::I8 { codes, scales } = gallery.rows.data else {
        return;
    };
    let rb = min_len(REFERENCE_BLOCK, m);
    let padded = rb.div_ceil(PANEL) * PANEL;
    let mut ws = Carve::new(scan);
    let (Ok(qpack), Ok(gpack), Ok(b_scale), Ok(b_terms), Ok(b_sums), Ok(b_q2)) = (
        ws.take_u32(i8_pack_len(n, d)),
        ws.take_u32(i8_pack_len(rb, d)),
        ws.take(padded),
        ws.take(padded),
        ws.take_u32(padded),
        ws.take_u32(padded),
    ) else {
        return;
    };
    let qb_max = min_len(I8_QUERY_BLOCK, n);
    let (Ok(bars), Ok(masks)) = (ws.take(qb_max), ws.take_u32(qb_max * rb.div_ceil(16))) else {
        return;
    };
    let tile = ws.rest();
    let Some(k) = NonZeroUsize::new(k) else {
        return;
    };
    for l in lens.iter_mut() {
        *l = 0;
    }
    // Queries: codes offset by 128 (sign bit flipped), as `vpdpbusd`'s unsigned side.
    pack_i8(q.codes, d, n, 0x80, qpack);
    let epilogue = match rank {
        Rank::Sq => I8Epilogue::Sq,
        Rank::Cosine => I8Epilogue::Cosine,
        Rank::NegDot => I8Epilogue::NegDot,
    };
    let mut start = 0;
    while start < m {
        let r1 = min_len(m, start + REFERENCE_BLOCK);
        let cols = r1 - start;
        let (Some(block), Some(bsc)) = (codes.get(start * d..r1 * d), scales.get(start..r1)) else {
            return;
        };
        pack_i8(block, d, cols, 0, gpack);
        for (c, (((f, t), sum), q2)) in b_scale
            .iter_mut()
            .zip(b_terms.iter_mut())
            .zip(b_sums.iter_mut())
            .zip(b_q2.iter_mut())
            .enumerate()
        {
            let row = block.get(c * d..(c + 1) * d).unwrap_or_default();
            let s = bsc.get(c).copied().unwrap_or(0.0);
            let sq = sq_codes(row);
            (*f, *t) = i8_terms(rank, s, sq);
            *sum = row
                .iter()
                .map(|&x| i32::from(x))
                .sum::<i32>()
                .cast_unsigned();
            *q2 = sq.cast_unsigned();
        }
        let mut q0 = 0;
        while q0 < n {
            let qb = min_len(I8_QUERY_BLOCK, n - q0);
            let (Some(a), Some(a_scale), Some(a_terms), Some(out)) = (
                qpack.get(q0 / PANEL * PANEL * d.div_ceil(4)..),
                q.f.get(q0..q0 + qb),
                q.t.get(q0..q0 + qb),
                tile.get_mut(..qb * cols),
            ) else {
                return;
            };
            let sums: &[i32] = bytemuck::try_cast_slice(&*b_sums).unwrap_or_default();
            // Each query's bar at the block's start: its farthest kept distance once its
            // heap (the root at the front of its output row) is full.
            for (i, bar) in bars.iter_mut().enumerate().take(qb) {
                let q = q0 + i;
                let full = lens.get(q).is_some_and(|&l| l as usize == k.get());
                *bar = if full {
                    distances.get(q * k.get()).copied().unwrap_or(f32::NAN)
                } else {
                    f32::INFINITY
                };
            }
            let done = simd::i8_tile(
                backend,
                I8Tile {
                    a,
                    a_scale,
                    a_terms,
                    b: gpack,
                    b_scale,
                    b_terms,
                    b_sums: sums,
                    shift: None,
                    quads: d.div_ceil(4),
                    rows: qb,
                    cols,
                    out: &mut *out,
                    keep: Some((&*bars, &mut *masks)),
                    epilogue,
                },
            );
            if !done {
                return;
            }
            backend.dispatch(SelectExact {
                tile: out,
                masks: &*masks,
                cols,
                base: start,
                q0,
                k,
                indices: &mut *indices,
                distances: &mut *distances,
                lens: &mut *lens,
            });
            q0 += qb;
        }
        start = r1;
    }
    finish(k.get(), indices, distances, lens);
}

/// Packs `rows` int8 rows (`dim` each) in panels of 16, four codes per word, each byte
/// XORed with `flip` (`0x80` for the queries: code `c` becomes the unsigned `c + 128`);
/// missing rows and codes are code 0.
fn pack_i8(codes: &[i8], dim: usize, rows: usize, flip: u8, out: &mut [u32]) {
    let quads = dim.div_ceil(4);
    let Some(panel_len) = NonZeroUsize::new(quads * PANEL) else {
        return;
    };
    let flip4 = u32::from_le_bytes([flip; 4]);
    for (pi, panel) in out.chunks_exact_mut(panel_len.get()).enumerate() {
        for r in 0..PANEL {
            let i = pi * PANEL + r;
            let row = if i < rows {
                codes.get(i * dim..(i + 1) * dim).unwrap_or_default()
            } else {
                &[]
            };
            let (whole, tail) = row.as_chunks::<4>();
            let mut p = 0;
            for c in whole {
                if let Some(o) = panel.get_mut(p * PANEL + r) {
                    *o = u32::from_le_bytes(c.map(i8::cast_unsigned)) ^ flip4;
                }
                p += 1;
            }
            // The last partial word, then missing rows: code 0 (`flip` for the queries).
            let mut last = [0_u8; 4];
            for (b, &c) in last.iter_mut().zip(tail) {
                *b = c.cast_unsigned();
            }
            let mut word = u32::from_le_bytes(last) ^ flip4;
            while p < quads {
                if let Some(o) = panel.get_mut(p * PANEL + r) {
                    *o = word;
                }
                word = flip4;
                p += 1;
            }
        }
    }
}

/// Selection over a tile of exact values: each query's candidates in column order,
/// rejected by one compare against its bar (16 at a time), the rest pushed as they are.
struct SelectExact<'t, 'o> {
    tile: &'t [f32],
    /// Per row and 16-column chunk, the columns not above the row's bar at the block's
    /// start.
    masks: &'t [u32],
    cols: usize,
    base: usize,
    q0: usize,
    k: NonZeroUsize,
    indices: &'o mut [u32],
    distances: &'o mut [f32],
    lens: &'o mut [u32],
}

impl Kernel for SelectExact<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, _: S) {
        let Some(cols) = NonZeroUsize::new(self.cols) else {
            return;
        };
        let k = self.k.get();
        let chunks = cols.get().div_ceil(16);
        let Some(chunks) = NonZeroUsize::new(chunks) else {
            return;
        };
        let rows = self
            .tile
            .chunks_exact(cols.get())
            .zip(self.masks.chunks_exact(chunks.get()));
        let lists = self
            .indices
            .chunks_exact_mut(k)
            .zip(self.distances.chunks_exact_mut(k))
            .zip(self.lens.iter_mut())
            .skip(self.q0);
        for ((row, masks), ((i_row, d_row), len)) in rows.zip(lists) {
            let mut heap = Heap::resume(d_row, i_row, *len as usize);
            let mut bar = heap.bar();
            for (c, &word) in masks.iter().enumerate() {
                let mut kept = word;
                while kept != 0 {
                    let bit = kept.trailing_zeros() as usize;
                    kept &= kept - 1;
                    let col = c * 16 + bit;
                    let Some(&v) = row.get(col) else {
                        continue;
                    };
                    // The bar may have dropped since the block's start.
                    #[allow(clippy::neg_cmp_op_on_partial_ord)]
                    if !(v > bar) {
                        heap.push(v, (self.base + col) as u32);
                        bar = heap.bar();
                    }
                }
            }
            *len = heap.len() as u32;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sign bits: Hamming search and the two-stage search.

/// The `k` nearest gallery rows of every query by Hamming distance (the number of
/// differing sign bits, [`quantize_binary`]'s rows), nearest first, ties to the smaller
/// index. Distances are exact integers, returned as `f32` (exact up to `2^24` bits).
/// Runs the `popcnt` instruction where the CPU has it (on the x86 backends), a portable
/// population count otherwise; 64 dimensions per word, so a 128-d row is two words.
///
/// `indices` and `distances` have `n * k` elements and are fully overwritten. Scalar
/// twin: [`crate::scalar::knn_hamming`].
///
/// [`quantize_binary`]: super::quantize_binary
///
/// # Errors
///
/// - [`Error::DimensionMismatch`] when the dimensions differ;
/// - [`Error::InvalidParameter`] (`"k"`) when `k == 0` or `k > m`;
/// - [`Error::IndexOutOfRange`] (`"reference"`) for more than `u32::MAX` gallery rows;
/// - [`Error::ShapeOverflow`], [`Error::LengthMismatch`] (`"indices"`, `"distances"`).
///
/// # Example
///
/// ```
/// use triplet_kernels::{knn_hamming, quantize_binary, BinaryMatrix, Matrix};
/// let enrolled = [1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0, -1.0];
/// let mut g = [0_u64; 2];
/// quantize_binary(Matrix::new(&enrolled, 2, 4)?, &mut g)?;
/// let mut q = [0_u64; 1];
/// quantize_binary(Matrix::new(&[0.5, 0.2, -0.1, -0.3], 1, 4)?, &mut q)?;
/// let (mut idx, mut dist) = ([0_u32; 2], [0.0_f32; 2]);
/// knn_hamming(BinaryMatrix::new(&q, 1, 4)?, BinaryMatrix::new(&g, 2, 4)?, 2, &mut idx, &mut dist)?;
/// assert_eq!((idx, dist), ([0, 1], [0.0, 2.0]));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn knn_hamming(
    queries: BinaryMatrix<'_>,
    gallery: BinaryMatrix<'_>,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
) -> Result<(), Error> {
    let (n, m) = (queries.rows(), gallery.rows());
    check_rows(m)?;
    check_search(n, queries.dim(), gallery.dim(), m, k, indices, distances)?;
    let w = binary_row_words(queries.dim());
    let (Some(w), Some(k)) = (NonZeroUsize::new(w), NonZeroUsize::new(k)) else {
        return Ok(());
    };
    let backend = Backend::active();
    for ((q, i_row), d_row) in queries
        .words
        .chunks_exact(w.get())
        .zip(indices.chunks_exact_mut(k.get()))
        .zip(distances.chunks_exact_mut(k.get()))
    {
        let mut heap = Heap::new(d_row, i_row);
        simd::dispatch_popcnt(
            backend,
            Hamming {
                q,
                gallery: gallery.words,
                heap: &mut heap,
            },
        );
        heap.sort();
    }
    Ok(())
}

/// One binary query against every gallery row.
struct Hamming<'a, 'h, 's> {
    q: &'a [u64],
    gallery: &'a [u64],
    heap: &'h mut Heap<'s>,
}

impl Kernel for Hamming<'_, '_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, _: S) {
        let Hamming { q, gallery, heap } = self;
        // Not `u32::MAX` until the heap is full: every count beats it.
        let mut bar = u32::MAX;
        let mut full = false;
        let cap = heap.dist.len();
        if let [q0, q1] = *q {
            // 128 dimensions (the common case): two words, unrolled.
            for (j, g) in gallery.as_chunks::<2>().0.iter().enumerate() {
                let h = (q0 ^ g[0]).count_ones() + (q1 ^ g[1]).count_ones();
                if h < bar || !full {
                    heap.push(h as f32, j as u32);
                    full = heap.len() == cap;
                    bar = if full { heap.bar() as u32 } else { u32::MAX };
                }
            }
            return;
        }
        let Some(w) = NonZeroUsize::new(q.len()) else {
            return;
        };
        for (j, g) in gallery.chunks_exact(w.get()).enumerate() {
            let h: u32 = q.iter().zip(g).map(|(a, b)| (a ^ b).count_ones()).sum();
            if h < bar || !full {
                heap.push(h as f32, j as u32);
                full = heap.len() == cap;
                bar = if full { heap.bar() as u32 } else { u32::MAX };
            }
        }
    }
}

/// Workspace elements of [`knn_rescored`] for rows of dimension `dim` and a shortlist of
/// `shortlist` candidates: `2 ceil(dim / 64) + 2 shortlist + 2` (the query's sign bits,
/// the shortlist and the query's norm term). Saturates instead of overflowing.
pub const fn knn_rescored_workspace_len(dim: usize, shortlist: usize) -> usize {
    binary_row_words(dim)
        .saturating_mul(2)
        .saturating_add(shortlist.saturating_mul(2))
        .saturating_add(2)
}

/// Two-stage search: for every `f32` query, the `shortlist` nearest rows of the binary
/// gallery by Hamming distance (the query's own sign bits, as [`knn_hamming`] ranks
/// them, ties to the smaller index), then those candidates re-scored against the finer
/// copy `fine` (f32, f16, bf16 or int8) in the direct form of [`knn_edge`], and the `k`
/// nearest of them returned (ties to the smaller index), with their distances under
/// `fine`'s metric. `binary` and `fine` hold the same rows (`binary` typically
/// [`quantize_binary`] of the `f32` embeddings that `fine` stores).
///
/// Each returned distance is the value [`knn_edge`] computes for that pair, bit for
/// bit; with `shortlist = m` the result is [`knn_edge`]'s. A smaller shortlist trades
/// recall for speed: the binary pass reads 1/32 of the `f32` gallery's bytes and the
/// re-scoring `shortlist` rows. sentence-transformers' quantized retrieval calls
/// `shortlist / k` the rescore multiplier (4 by default).
///
/// `indices` and `distances` have `n * k` elements and are fully overwritten; the
/// workspace needs [`knn_rescored_workspace_len`]`(d, shortlist)` elements. Scalar twin:
/// [`crate::scalar::knn_rescored`].
///
/// [`quantize_binary`]: super::quantize_binary
///
/// # Errors
///
/// - [`Error::DimensionMismatch`] when `binary`'s or `fine`'s dimension is not the
///   queries';
/// - [`Error::LengthMismatch`] (`"binary"`) when `binary` has another number of rows than
///   `fine`;
/// - [`Error::InvalidParameter`] (`"k"`) when `k == 0` or `k > m`, (`"shortlist"`) when
///   `shortlist < k` or `shortlist > m`;
/// - [`Error::ShapeOverflow`], [`Error::LengthMismatch`] (`"indices"`, `"distances"`),
///   [`Error::WorkspaceTooSmall`].
///
/// # Example
///
/// ```
/// use triplet_kernels::{knn_rescored, knn_rescored_workspace_len, prepare_edge_gallery};
/// use triplet_kernels::{quantize_binary, BinaryMatrix, EdgeMatrix, Matrix, SearchMetric};
/// let enrolled = [0.9, 0.1, 0.5, 0.5, -1.0, 0.2, 0.2, -0.9];
/// let x = Matrix::new(&enrolled, 4, 2)?;
/// let mut bits = [0_u64; 4];
/// quantize_binary(x, &mut bits)?;
/// let (mut norms, mut ws) = ([0.0_f32; 4], [0.0_f32; 2]);
/// let fine = prepare_edge_gallery(EdgeMatrix::f32(x), SearchMetric::Cosine, &mut norms, &mut ws)?;
/// let (mut idx, mut dist) = ([0_u32; 1], [0.0_f32; 1]);
/// let mut ws = [0.0_f32; knn_rescored_workspace_len(2, 2)];
/// let q = Matrix::new(&[0.6, 0.4], 1, 2)?;
/// knn_rescored(q, BinaryMatrix::new(&bits, 4, 2)?, &fine, 2, 1, &mut idx, &mut dist, &mut ws)?;
/// assert_eq!(idx, [1]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn knn_rescored(
    queries: Matrix<'_>,
    binary: BinaryMatrix<'_>,
    fine: &EdgeGallery<'_>,
    shortlist: usize,
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
    workspace: &mut [f32],
) -> Result<(), Error> {
    let (n, d) = (queries.rows(), queries.dim());
    rescored_check(n, d, &binary, &fine.rows, shortlist, k, indices, distances)?;
    let w = binary_row_words(d);
    check_workspace(knn_rescored_workspace_len(d, shortlist), workspace.len())?;
    let backend = Backend::active();
    let rank = metric_rank(fine.metric);
    let (Some(k), Some(wn)) = (NonZeroUsize::new(k), NonZeroUsize::new(w)) else {
        return Ok(());
    };
    let mut ws = Carve::new(workspace);
    let (Ok(qn), Ok(s_dist), Ok(s_idx)) = (ws.take(1), ws.take(shortlist), ws.take_u32(shortlist))
    else {
        return Ok(());
    };
    let (_, qbits, _) = bytemuck::pod_align_to_mut::<f32, u64>(ws.rest());
    let Some(qbits) = qbits.get_mut(..wn.get()) else {
        return Ok(());
    };
    for ((a, i_row), d_row) in queries
        .row_iter()
        .zip(indices.chunks_exact_mut(k.get()))
        .zip(distances.chunks_exact_mut(k.get()))
    {
        binarize_row(a, qbits);
        let mut coarse = Heap::new(&mut *s_dist, &mut *s_idx);
        simd::dispatch_popcnt(
            backend,
            Hamming {
                q: qbits,
                gallery: binary.words,
                heap: &mut coarse,
            },
        );
        let Ok(row) = Matrix::new(a, 1, d) else {
            continue;
        };
        metric_norms(backend, &row, rank.norm_metric(), qn);
        let na = qn.first().copied().unwrap_or(0.0);
        let mut heap = Heap::new(d_row, i_row);
        offer_rows(backend, rank, a, na, fine, Some(&*s_idx), &mut heap);
        heap.sort();
    }
    if fine.metric == SearchMetric::Euclidean {
        for v in distances.iter_mut() {
            *v = math::sqrt(*v);
        }
    }
    Ok(())
}

/// The argument checks of [`knn_rescored`], in its documented order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rescored_check(
    n: usize,
    d: usize,
    binary: &BinaryMatrix<'_>,
    fine: &EdgeMatrix<'_>,
    shortlist: usize,
    k: usize,
    indices: &[u32],
    distances: &[f32],
) -> Result<(), Error> {
    let m = fine.rows();
    if binary.dim() != d {
        return Err(Error::DimensionMismatch {
            left: d,
            right: binary.dim(),
        });
    }
    if binary.rows() != m {
        return Err(Error::LengthMismatch {
            buffer: "binary",
            expected: m.saturating_mul(binary_row_words(d)),
            actual: binary.words.len(),
        });
    }
    check_search(n, d, fine.dim(), m, k, indices, distances)?;
    if shortlist < k || shortlist > m {
        return Err(Error::InvalidParameter {
            name: "shortlist",
            expected: "k <= shortlist <= gallery rows",
        });
    }
    Ok(())
}
