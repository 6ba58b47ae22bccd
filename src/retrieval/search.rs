//! The streaming search shared by [`super::knn`] and [`super::retrieval_metrics`]: Gram
//! tiles through the packed microkernel, then per-query selection that rejects a
//! candidate with one compare and recomputes the rest in the direct form.
//!
//! For a block of consecutive queries and a block of references, the packed distance
//! microkernel computes the Gram-form tile (`|a|^2 + |b|^2 - 2 <a, b>` for the Euclidean
//! metrics, `1 - <a, b> / (|a| |b|)` for cosine) into the workspace. Each query then scans
//! its tile row against a bar: the farthest distance its heap keeps plus the largest error
//! the two forms can have between them (see [`Slack`]). A candidate above the bar is
//! provably not nearer, in the direct form, than the farthest kept one, and is rejected
//! (sixteen at a time: one vector compare and one branch). A candidate at or below it
//! (or NaN) is recomputed in the direct form and offered to the heap, which keeps the
//! direct distances only. So the heaps receive exactly the direct-form candidates that
//! could enter them, in increasing index order: the lists are those of the pair-by-pair
//! direct search, bit for bit, at the cost of the Gram tile plus a few direct distances
//! per query (those that fill the heap and those that improve it).

use super::bf16::{self, Packed};
use super::heap::Heap;
use super::i8f::{self, Norms};
use super::Shape;
use crate::distance::{cross_distances_rows_workspace_len, DistanceMode, Metric};
use crate::matrix::Matrix;
use crate::simd::{self, Backend, Kernel, Simd};
use crate::workspace::min_len;

/// What the search ranks by.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Rank {
    /// The squared Euclidean distance (also for [`Metric::Euclidean`], rooted at the end).
    Sq,
    /// The cosine distance.
    Cosine,
    /// The negated inner product.
    NegDot,
}

impl Rank {
    /// The ranking of a [`Metric`].
    pub(super) fn of(metric: Metric) -> Self {
        match metric {
            Metric::Cosine => Rank::Cosine,
            _ => Rank::Sq,
        }
    }

    /// The metric whose norm terms the search reads: squared norms (Euclidean), clamped
    /// norms (cosine, and the inner product's error bound).
    pub(super) fn norm_metric(self) -> Metric {
        match self {
            Rank::Sq => Metric::SquaredEuclidean,
            Rank::Cosine | Rank::NegDot => Metric::Cosine,
        }
    }
}

/// The direct-form value the heaps keep: `sum (a_i - b_i)^2`, `1 - <a, b> / (|a| |b|)`
/// (clamped norms `na`, `nb`), or `-<a, b>`.
#[inline(always)]
pub(super) fn direct<S: Simd>(s: S, rank: Rank, a: &[f32], b: &[f32], na: f32, nb: f32) -> f32 {
    match rank {
        Rank::Sq => simd::sq_dist_with(s, a, b),
        Rank::Cosine => 1.0 - simd::dot_with(s, a, b) / (na * nb),
        Rank::NegDot => -simd::dot_with(s, a, b),
    }
}

/// Query blocks below this many rows skip the Gram tile (whose register tile would be
/// mostly padding) and compute every distance in the direct form, unless the references
/// come packed for the bf16 filter (a prepared gallery's filter copy): their filter
/// values then come from the matrix-vector kernel of [`simd::bf16_tile`].
pub(super) const SMALL_BLOCK: usize = 4;

/// Queries per block: the Gram tile's rows, packed once per reference block.
pub(super) const QUERY_BLOCK: usize = 128;
/// References per block: the Gram tile's columns, packed once per query block (about
/// 256 KiB at `d = 128`, so a packed block stays in the second cache level while every
/// query panel passes over it).
pub(super) const REFERENCE_BLOCK: usize = 512;

/// Candidates tested together by the rejection compare.
const LANES: usize = 16;
/// Kept candidates whose direct distances are computed together (see [`Pair::push_batch`]).
const BATCH: usize = 64;

/// Workspace of the streaming pass for `queries` queries and `references` references of
/// dimension `dim`: both norm vectors, the heap sizes of [`Stream::knn`] (one `u32` per
/// query), the Gram tile and the microkernel's packing, and the bf16 filter's packing of
/// the queries and of one reference block.
pub(super) const fn stream_len(queries: usize, references: usize, dim: usize) -> usize {
    let qb = min_len(QUERY_BLOCK, queries);
    let rb = min_len(REFERENCE_BLOCK, references);
    references
        .saturating_add(queries.saturating_mul(2))
        .saturating_add(qb.saturating_mul(rb))
        .saturating_add(cross_distances_rows_workspace_len(qb, rb, dim))
        .saturating_add(filter_pack_len(queries, dim))
        .saturating_add(filter_pack_len(rb, dim))
}

/// Workspace of a filter packing of `rows` rows of dimension `dim`: the bf16 one's, in
/// which the int8 one fits at every dimension it is used at ([`i8f::usable`]).
pub(super) const fn filter_pack_len(rows: usize, dim: usize) -> usize {
    bf16::pack_len(rows, dim)
}

/// `ws` split into the filter packings of `queries` queries and of one block of `refs`
/// references (of dimension `dim`), and the rest (each part shorter if `ws` is).
pub(super) fn split_packs(
    ws: &mut [f32],
    queries: usize,
    refs: usize,
    dim: usize,
) -> (&mut [f32], &mut [f32], &mut [f32]) {
    let (qpack, ws) = ws.split_at_mut(min_len(filter_pack_len(queries, dim), ws.len()));
    let rb = min_len(REFERENCE_BLOCK, refs);
    let (gpack, ws) = ws.split_at_mut(min_len(filter_pack_len(rb, dim), ws.len()));
    (qpack, gpack, ws)
}

/// Rows packed for a filter tile: bf16 (AVX512_BF16) or int8 (AVX512_VNNI).
#[derive(Clone, Copy, Debug)]
pub(super) enum Filter<'p> {
    Bf16(Packed<'p>),
    I8(i8f::Packed<'p>),
}

impl<'p> Filter<'p> {
    /// The rows `r0..` of a packing, `r0` a multiple of 16.
    pub(super) fn rows_from(self, r0: usize) -> Filter<'p> {
        match self {
            Filter::Bf16(p) => Filter::Bf16(p.rows_from(r0)),
            Filter::I8(p) => Filter::I8(p.rows_from(r0)),
        }
    }
}

/// The widest gap between the Gram form the rejection test reads and the direct form the
/// heaps keep, for one query: a candidate whose Gram value `g` is above `bar + pad` has a
/// direct distance above `bar`.
///
/// With `u = 2^-24`, `N = |a|^2 + |b|^2` and `S` the exact squared distance, the Gram form
/// is within `(2 d + 4) u N` of `S` and the direct form within `(d + 2) u S <= (2 d + 4) u N`
/// (each times `1 / (1 - (d + 2) u)`; see [`crate::DistanceMode`]); their gap is below
/// `(4 d + 8) u N` times that factor. The pad takes `(5 d + 16) u (|a|^2 + max |b|^2)`
/// over the reference block, which also covers the rounding of the pad and of the squared
/// norms themselves, plus `(2 d + 16)` times the smallest normal number for terms lost to
/// underflow. For cosine both forms are within `(2 d + 12) u` of the exact distance
/// (`sum |a_i b_i| <= |a| |b|`): the pad is `(5 d + 32) u`. For the inner product both
/// are within `(d + 2) u |a| |b|` of the exact one: the pad is `(3 d + 16) u |a| max |b|`
/// (clamped norms, never below the true ones) plus the underflow term.
#[derive(Clone, Copy)]
struct Slack {
    /// `(5 d + 16) u` (Euclidean) or `(5 d + 32) u` (cosine).
    coef: f32,
    /// Absolute term (Euclidean).
    tiny: f32,
}

impl Slack {
    fn new(rank: Rank, dim: usize) -> Self {
        let u = f32::EPSILON / 2.0;
        let d = dim as f32;
        match rank {
            Rank::Cosine => Slack {
                coef: (5.0 * d + 32.0) * u,
                tiny: 0.0,
            },
            Rank::NegDot => Slack {
                coef: (3.0 * d + 16.0) * u,
                tiny: (2.0 * d + 16.0) * f32::MIN_POSITIVE,
            },
            Rank::Sq => Slack {
                coef: (5.0 * d + 16.0) * u,
                tiny: (2.0 * d + 16.0) * f32::MIN_POSITIVE,
            },
        }
    }

    /// The pad of the bf16 filter: the rows rounded to bf16 (unit roundoff `2^-8`) change
    /// each product by at most `(2^-7 + 2^-16) |a_i b_i|`, so the Gram form moves by
    /// `2^-7 + 2^-15` times the terms the `f32` pad scales (`N`, 1 for cosine, `|a| |b|`
    /// for the inner product) on top of the `f32` pad, widened by `d u` for the rounding
    /// of the bf16 products' sums; products flushed below the smallest normal number add
    /// their count times it (an absolute term, scaled by the inverse norms for cosine).
    fn bf16(rank: Rank, dim: usize) -> Self {
        let f = Slack::new(rank, dim);
        let u = f32::EPSILON / 2.0;
        let d = dim as f32;
        let wide = 0.007_843_018 + d * u; // 2^-7 + 2^-15 + d u
        let tiny = (4.0 * d + 32.0) * f32::MIN_POSITIVE;
        match rank {
            // 1 / (max(|a|, eps) max(|b|, eps)) <= 1e24 < 2^80.
            Rank::Cosine => Slack {
                coef: f.coef + wide + (4.0 * d + 32.0) * 1.421_085_5e-14, // 2^-46
                tiny: 0.0,
            },
            _ => Slack {
                coef: f.coef + wide,
                tiny: f.tiny + tiny,
            },
        }
    }

    /// The pad of one query (norm term `na`) against a block whose largest norm term is
    /// `nb_max`.
    #[inline(always)]
    ///
    /// Beyond the range where the direct form keeps its bound (a cosine's `|a| |b|` above
    /// `f32::MAX / 4`: its `<a, b> / (|a| |b|)` overflows and the direct value is
    /// garbage, possibly below the true one), the pad is infinite and nothing is
    /// rejected, so the lists stay those of the direct search for any data.
    fn pad(self, rank: Rank, na: f32, nb_max: f32) -> f32 {
        match rank {
            Rank::Cosine if na * nb_max <= DIRECT_LIMIT => self.coef,
            Rank::Cosine => f32::INFINITY,
            Rank::NegDot => self.coef * (na * nb_max) + self.tiny,
            Rank::Sq => self.coef * (na + nb_max) + self.tiny,
        }
    }
}

/// The pads of one tile: the gap of its values' form ([`Slack`], `f32` Gram or bf16) for
/// a query against a block whose largest norm term is `nb_max`, plus for the int8
/// filter the quantization's gap ([`i8f::quant_pad`]) from the queries' residual bounds
/// (indexed by the tile's row) and the block's largest one.
#[derive(Clone, Copy)]
struct Pads<'q> {
    slack: Slack,
    nb_max: f32,
    quant: Option<(&'q [f32], f32)>,
}

impl Pads<'_> {
    /// The pad of the bar of the tile's row `i` (norm term `na`): for the int8 filter,
    /// whose tile lowers each value by its column's share of the quantization gap, the
    /// row's share only ([`i8f::row_pad`]).
    #[inline(always)]
    fn pad(self, rank: Rank, i: usize, na: f32) -> f32 {
        let pad = self.slack.pad(rank, na, self.nb_max);
        match self.quant {
            Some((eps, _)) => {
                let eps_a = eps.get(i).copied().unwrap_or(f32::NAN);
                pad + i8f::row_pad(rank, eps_a, self.nb_max)
            }
            None => pad,
        }
    }

    /// The whole gap between a value of row `i` and its direct distance, whatever the
    /// column: [`Pads::pad`] plus, for the int8 filter, the largest column share.
    #[inline(always)]
    fn full(self, rank: Rank, i: usize, na: f32) -> f32 {
        let pad = self.slack.pad(rank, na, self.nb_max);
        match self.quant {
            Some((eps, eps_b)) => {
                let eps_a = eps.get(i).copied().unwrap_or(f32::NAN);
                pad + i8f::quant_pad(rank, eps_a, na, eps_b, self.nb_max)
            }
            None => pad,
        }
    }

    /// The coefficient of a column's residual bound in the int8 tile's shift, for row `i`
    /// (0 without the int8 filter).
    #[inline(always)]
    fn coef(self, rank: Rank, i: usize, na: f32) -> f32 {
        match self.quant {
            Some((eps, _)) => i8f::column_coef(rank, eps.get(i).copied().unwrap_or(f32::NAN), na),
            None => 0.0,
        }
    }
}

/// Largest `|a| |b|` (clamped norms) for which the direct cosine `1 - <a, b> / (|a| |b|)`
/// is computed without overflow.
const DIRECT_LIMIT: f32 = f32::MAX / 4.0;

/// What the streaming pass needs besides the heaps.
pub(super) struct Stream<'a> {
    /// The backend of the whole call.
    pub(super) backend: Backend,
    /// What the search ranks by.
    pub(super) rank: Rank,
    pub(super) queries: Matrix<'a>,
    pub(super) shape: Shape<'a>,
    /// Norm terms of the queries: those of [`Rank::norm_metric`].
    pub(super) q_norms: &'a [f32],
    /// Norm terms of the references, as `q_norms`.
    pub(super) r_norms: &'a [f32],
    /// The references packed once for the bf16 filter (a prepared gallery's filter
    /// copy), used instead of packing each block per call; `None` packs per call.
    pub(super) r_packed: Option<Packed<'a>>,
}

impl<'a> Stream<'a> {
    /// Streams every reference block past the queries `q0..q0 + heaps.len()`, offering
    /// query `q0 + i`'s candidates to `heaps[i]` (a heap of capacity 0 is skipped), then
    /// sorts every heap nearest first. `ws` holds at least the tile and the packings of
    /// [`stream_len`] (everything but the norms and the heap sizes).
    pub(super) fn scan(&self, q0: usize, heaps: &mut [Heap<'_>], ws: &mut [f32]) {
        let (m, d) = (self.shape.refs.rows(), self.queries.dim());
        let qb = heaps.len();
        let (qpack, gpack, ws) = split_packs(ws, qb, m, d);
        let queries = self.pack_queries(q0, qb, qpack);
        let mut start = 0;
        while start < m {
            let refs = queries.and_then(|q| self.pack_refs(start, q, gpack));
            self.scan_block(q0, heaps, start, queries.zip(refs), ws);
            start += REFERENCE_BLOCK;
        }
        for heap in heaps.iter_mut() {
            heap.sort();
        }
    }

    /// Packs queries `q0..q0 + qb` for a filter tile, when the backend has one and the
    /// block is large enough to use a tile: the bf16 filter against prepared references
    /// (their filter copy is bf16), else the int8 filter where the CPU has it (twice the
    /// bf16 rate), else the bf16 one.
    ///
    /// A block below [`SMALL_BLOCK`] queries is packed only against prepared references
    /// (their packed filter copy makes the filter a pass over half the bytes of the
    /// rows); otherwise it takes the direct form throughout.
    fn pack_queries<'w>(&self, q0: usize, qb: usize, ws: &'w mut [f32]) -> Option<Filter<'w>> {
        if qb < SMALL_BLOCK && self.r_packed.is_none() {
            return None;
        }
        let d = self.queries.dim();
        let rows = self.queries.as_slice().get(q0 * d..(q0 + qb) * d)?;
        let norms = self.q_norms.get(q0..q0 + qb)?;
        if self.r_packed.is_none() && simd::has_i8_tile(self.backend) && i8f::usable(d) {
            return i8f::pack(
                self.backend,
                self.rank,
                rows,
                d,
                qb,
                Norms::Given(norms),
                true,
                ws,
            )
            .map(Filter::I8);
        }
        if !simd::has_bf16_tile(self.backend) {
            return None;
        }
        bf16::pack(self.backend, self.rank, rows, d, qb, norms, ws).map(Filter::Bf16)
    }

    /// Packs the reference block starting at `start` for the filter the queries were
    /// packed for (`like`).
    pub(super) fn pack_refs<'w>(
        &self,
        start: usize,
        like: Filter<'_>,
        ws: &'w mut [f32],
    ) -> Option<Filter<'w>>
    where
        'a: 'w,
    {
        if let Some(packed) = self.r_packed {
            // `start` is a multiple of `REFERENCE_BLOCK`, itself one of the panel height.
            return Some(Filter::Bf16(packed.rows_from(start)));
        }
        let refs = self.shape.refs;
        let (m, d) = (refs.rows(), refs.dim());
        let rb = min_len(REFERENCE_BLOCK, m.checked_sub(start)?);
        let rows = refs.as_slice().get(start * d..(start + rb) * d)?;
        let norms = self.r_norms.get(start..start + rb)?;
        match like {
            Filter::I8(_) => {
                let norms = Norms::Given(norms);
                i8f::pack(self.backend, self.rank, rows, d, rb, norms, false, ws).map(Filter::I8)
            }
            Filter::Bf16(_) => {
                bf16::pack(self.backend, self.rank, rows, d, rb, norms, ws).map(Filter::Bf16)
            }
        }
    }

    /// The `k` nearest references of every query into the rows of `indices` and
    /// `distances` (`n * k` each), reference blocks outermost: each block is read from
    /// memory once and stays in cache while every query block passes over it, the heaps
    /// living in the output rows between blocks, their sizes in `lens` (`n`).
    pub(super) fn knn(
        &self,
        k: usize,
        indices: &mut [u32],
        distances: &mut [f32],
        lens: &mut [u32],
        ws: &mut [f32],
    ) {
        let n = self.queries.rows();
        let (m, d) = (self.shape.refs.rows(), self.queries.dim());
        if k == 0 {
            return;
        }
        for l in lens.iter_mut() {
            *l = 0;
        }
        let (qpack, gpack, ws) = split_packs(ws, n, m, d);
        let queries = self.pack_queries(0, n, qpack);
        let mut start = 0;
        while start < m {
            let refs = queries.and_then(|q| self.pack_refs(start, q, gpack));
            self.knn_block(k, indices, distances, lens, (start, 0), queries, refs, ws);
            start += REFERENCE_BLOCK;
        }
        finish(k, indices, distances, lens);
    }

    /// Packs all the queries for a filter into `ws` (at least [`filter_pack_len`]`(n, d)`),
    /// when the backend has one.
    pub(super) fn pack_all_queries<'w>(&self, ws: &'w mut [f32]) -> Option<Filter<'w>> {
        self.pack_queries(0, self.queries.rows(), ws)
    }

    /// One reference block of [`Stream::knn`]: offers the block starting at `start` to
    /// every query's heap (living in its output row, its size in `lens`), query block by
    /// query block; `at` is `(start, base)`, `base` the gallery index of reference row 0
    /// (0, unless the references are one block of a larger gallery). `queries` is the
    /// filter packing of all queries and `refs` the block's ([`Stream::pack_refs`]), if
    /// any; `ws` holds the tile and the microkernel's packing.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn knn_block(
        &self,
        k: usize,
        indices: &mut [u32],
        distances: &mut [f32],
        lens: &mut [u32],
        at: (usize, usize),
        queries: Option<Filter<'_>>,
        refs: Option<Filter<'_>>,
        ws: &mut [f32],
    ) {
        let n = self.queries.rows();
        let (start, base) = at;
        if k == 0 {
            return;
        }
        let mut rows = indices
            .chunks_exact_mut(k)
            .zip(distances.chunks_exact_mut(k));
        let mut q0 = 0;
        while q0 < n {
            let qb = min_len(QUERY_BLOCK, n - q0);
            let Some(block_lens) = lens.get_mut(q0..q0 + qb) else {
                return;
            };
            let mut heaps: [Heap<'_>; QUERY_BLOCK] = core::array::from_fn(|_| Heap::empty());
            for ((heap, (i_row, d_row)), &l) in heaps
                .iter_mut()
                .zip(rows.by_ref().take(qb))
                .zip(block_lens.iter())
            {
                *heap = Heap::resume(d_row, i_row, l as usize);
            }
            let heaps = heaps.get_mut(..qb).unwrap_or_default();
            // A block of fewer than `SMALL_BLOCK` queries takes the direct path, unless
            // the references come packed.
            let filter = queries
                .zip(refs)
                .filter(|_| qb >= SMALL_BLOCK || self.r_packed.is_some())
                .map(|(q, r)| (q.rows_from(q0), r));
            self.scan_block_at(q0, heaps, (start, base), filter, ws);
            for (l, heap) in block_lens.iter_mut().zip(heaps.iter()) {
                // At most `k <= m <= u32::MAX`.
                *l = heap.len() as u32;
            }
            q0 += qb;
        }
    }

    /// Offers the reference block starting at `start` (at most [`REFERENCE_BLOCK`] rows)
    /// to the heaps of queries `q0..q0 + heaps.len()`, as [`Stream::scan`] does, without
    /// sorting. With `filter` (the query block and the reference block packed for the
    /// bf16 filter) the rejection tile is the bf16 one, else the `f32` Gram tile.
    pub(super) fn scan_block(
        &self,
        q0: usize,
        heaps: &mut [Heap<'_>],
        start: usize,
        filter: Option<(Filter<'_>, Filter<'_>)>,
        ws: &mut [f32],
    ) {
        self.scan_block_at(q0, heaps, (start, 0), filter, ws);
    }

    /// [`Stream::scan_block`] with `at = (start, base)`: the heaps receive indices
    /// `base + start + r`.
    fn scan_block_at(
        &self,
        q0: usize,
        heaps: &mut [Heap<'_>],
        at: (usize, usize),
        filter: Option<(Filter<'_>, Filter<'_>)>,
        ws: &mut [f32],
    ) {
        let (start, base) = at;
        let refs = self.shape.refs;
        let d = refs.dim();
        let m = refs.rows();
        let qb = heaps.len();
        let q1 = q0 + qb;
        let width = min_len(REFERENCE_BLOCK, m);
        let (tile, pack) = ws.split_at_mut(min_len(qb.saturating_mul(width), ws.len()));
        let gram = match self.rank {
            Rank::Cosine => Metric::Cosine,
            _ => Metric::SquaredEuclidean,
        };
        if start >= m {
            return;
        }
        let rb = min_len(REFERENCE_BLOCK, m - start);
        let (Ok(block), Some(r_norms)) = (
            refs.sub_rows(start, start + rb),
            self.r_norms.get(start..start + rb),
        ) else {
            return;
        };
        let nb_max = r_norms.iter().fold(0.0_f32, |a, &b| a.max(b));
        let f32_pads = Pads {
            slack: Slack::new(self.rank, d),
            nb_max,
            quant: None,
        };
        let mut pads = f32_pads;
        let mut masked = false;
        // A small query block is filtered only against prepared references.
        let small = qb < SMALL_BLOCK;
        let (tile, width) = if small && filter.is_none() {
            (&mut [][..], 0)
        } else {
            let Some(tile) = tile.get_mut(..qb * rb) else {
                return;
            };
            // The pads of the filter tile, if one runs here.
            let filter_pads = filter.and_then(|f| match f {
                (Filter::Bf16(_), Filter::Bf16(_)) => Some(Pads {
                    slack: Slack::bf16(self.rank, d),
                    ..f32_pads
                }),
                (Filter::I8(q), Filter::I8(r)) => Some(Pads {
                    quant: Some((q.eps, r.eps_max)),
                    ..f32_pads
                }),
                _ => None,
            });
            let done = filter.zip(filter_pads).is_some_and(|((q, r), fp)| {
                // Each query's bar at the start of the block (it only drops during the
                // block, so a candidate above it stays rejected). Once every heap with
                // room is full, the tile is reduced to bit masks in registers.
                let mut bars = [0.0_f32; QUERY_BLOCK];
                // The int8 tile's per-row coefficients of its columns' shift.
                let mut coefs = [0.0_f32; QUERY_BLOCK];
                let mut all_full = true;
                for (i, ((bar, coef), heap)) in bars
                    .iter_mut()
                    .zip(coefs.iter_mut())
                    .zip(heaps.iter())
                    .enumerate()
                {
                    let na = self.q_norms.get(q0 + i).copied().unwrap_or(0.0);
                    *coef = fp.coef(self.rank, i, na);
                    *bar = if heap.dist.is_empty() {
                        f32::NEG_INFINITY
                    } else {
                        heap.bar() + fp.pad(self.rank, i, na)
                    };
                    all_full &= !heap.dist.is_empty() && bar.is_finite() || heap.dist.is_empty();
                }
                let chunks = qb * rb.div_ceil(LANES);
                // (A small block's values come from the row kernel; its masks would
                // take a whole panel of rows.)
                masked = all_full && !small;
                let (out, keep) = if masked {
                    // An `f32` slice always reinterprets as `u32` (were it not to, the
                    // tile kernels refuse the empty buffers: the `f32` tile runs).
                    let words = bytemuck::try_cast_slice_mut::<f32, u32>(&mut *tile);
                    let masks = words.unwrap_or_default().get_mut(..chunks);
                    (&mut [][..], masks.map(|m| (&bars[..], m)))
                } else {
                    (&mut *tile, None)
                };
                match (q, r) {
                    (Filter::Bf16(q), Filter::Bf16(r)) => simd::bf16_tile(
                        self.backend,
                        simd::Bf16Tile {
                            a: q.words,
                            a_terms: q.terms,
                            b: r.words,
                            b_terms: r.terms,
                            pairs: q.pairs,
                            rows: qb,
                            cols: rb,
                            out,
                            keep,
                            epilogue: match self.rank {
                                Rank::Sq => simd::Bf16Epilogue::Sq,
                                Rank::Cosine => simd::Bf16Epilogue::Cosine,
                                Rank::NegDot => simd::Bf16Epilogue::NegDot,
                            },
                        },
                    ),
                    (Filter::I8(q), Filter::I8(r)) => simd::i8_tile(
                        self.backend,
                        simd::I8Tile {
                            a: q.words,
                            a_scale: q.scale,
                            a_terms: q.terms,
                            b: r.words,
                            b_scale: r.scale,
                            b_terms: r.terms,
                            b_sums: r.sums,
                            shift: Some((&coefs[..], r.eps)),
                            quads: q.quads,
                            rows: qb,
                            cols: rb,
                            out,
                            keep,
                            epilogue: match self.rank {
                                Rank::Sq => simd::I8Epilogue::Sq,
                                Rank::Cosine => simd::I8Epilogue::Cosine,
                                Rank::NegDot => simd::I8Epilogue::NegDot,
                            },
                        },
                    ),
                    _ => false,
                }
            });
            let width = if let (true, Some(fp)) = (done, filter_pads) {
                pads = fp;
                rb
            } else if small {
                // The tile kernel refused (it cannot run here): the direct form.
                masked = false;
                0
            } else {
                masked = false;
                crate::distance::cross_tile_on(
                    self.backend,
                    self.queries,
                    q0..q1,
                    block,
                    gram,
                    DistanceMode::Gram,
                    self.rank == Rank::NegDot,
                    tile,
                    pack,
                );
                rb
            };
            (tile, width)
        };
        self.backend.dispatch(Select {
            rank: self.rank,
            tile,
            width,
            masked,
            rows: rb,
            q0,
            start: base + start,
            heaps,
            queries: self.queries,
            block: block.as_slice(),
            dim: d,
            q_norms: self.q_norms,
            r_norms,
            pads,
            leave_one_out: self.shape.leave_one_out,
        });
    }
}

/// [`Stream::knn`] against a gallery `shape.refs` whose norm terms are computed block by
/// block into `r_norms` (`m`), each block's just before the block is packed and searched
/// (its rows then come from cache), instead of in a pass of their own over the gallery.
#[allow(clippy::too_many_arguments)]
pub(super) fn knn_by_blocks(
    backend: Backend,
    rank: Rank,
    queries: Matrix<'_>,
    shape: Shape<'_>,
    q_norms: &[f32],
    r_norms: &mut [f32],
    k: usize,
    indices: &mut [u32],
    distances: &mut [f32],
    lens: &mut [u32],
    ws: &mut [f32],
) {
    let (n, m, d) = (queries.rows(), shape.refs.rows(), queries.dim());
    if k == 0 {
        return;
    }
    for l in lens.iter_mut() {
        *l = 0;
    }
    let (qpack, gpack, ws) = split_packs(ws, n, m, d);
    let packer = Stream {
        backend,
        rank,
        queries,
        shape,
        q_norms,
        r_norms: &[],
        r_packed: None,
    };
    let packed = packer.pack_all_queries(qpack);
    let mut start = 0;
    while start < m {
        let r1 = min_len(m, start + REFERENCE_BLOCK);
        let (Ok(refs), Some(norms)) = (shape.refs.sub_rows(start, r1), r_norms.get_mut(start..r1))
        else {
            break;
        };
        // Against int8-packed queries, a Euclidean block's squared norms come from its
        // packing's first pass over each row (a pass of their own would be the one that
        // waits for the rows from memory: about 3 ms of R3's call, beside 5 ms of
        // packing); otherwise they are computed first. (A small query block takes the
        // direct form, which reads no Euclidean norm.)
        let fuse = rank == Rank::Sq && matches!(packed, Some(Filter::I8(_)));
        let fused = if fuse {
            let fill = Norms::Fill(&mut *norms);
            i8f::pack(
                backend,
                rank,
                refs.as_slice(),
                d,
                r1 - start,
                fill,
                false,
                gpack,
            )
        } else {
            None
        };
        if fused.is_none() && (n >= SMALL_BLOCK || rank == Rank::Cosine) {
            crate::distance::metric_norms(backend, &refs, rank.norm_metric(), norms);
        }
        let stream = Stream {
            r_norms: norms,
            shape: Shape { refs, ..shape },
            ..packer
        };
        // (A fused packing that failed leaves the block to the `f32` tile.)
        let refs = match fused {
            Some(p) => Some(Filter::I8(p)),
            None if fuse => None,
            None => packed.and_then(|q| stream.pack_refs(0, q, gpack)),
        };
        stream.knn_block(k, indices, distances, lens, (0, start), packed, refs, ws);
        start = r1;
    }
    finish(k, indices, distances, lens);
}

/// Sorts every query's heap (in its output rows, its size in `lens`) nearest first: the
/// end of a search streamed block by block.
pub(super) fn finish(k: usize, indices: &mut [u32], distances: &mut [f32], lens: &[u32]) {
    let Some(k) = core::num::NonZeroUsize::new(k) else {
        return;
    };
    for ((i_row, d_row), &l) in indices
        .chunks_exact_mut(k.get())
        .zip(distances.chunks_exact_mut(k.get()))
        .zip(lens.iter())
    {
        Heap::resume(d_row, i_row, l as usize).sort();
    }
}

/// The selection of one tile: for every query row, the rejection compare, then the direct
/// distances of the survivors offered to the query's heap.
struct Select<'t, 'h, 's> {
    rank: Rank,
    /// `heaps.len() x width` Gram-form values (`f32` or bf16 filter); empty
    /// (`width == 0`) for a small query block without a filter, whose candidates are all
    /// computed in the direct form.
    tile: &'t [f32],
    width: usize,
    /// The tile holds, instead of values, one bit mask per row and 16-column chunk (in
    /// `u32` words) of the candidates kept by each row's bar at the block's start.
    masked: bool,
    /// Rows of the reference block.
    rows: usize,
    /// Query of the tile's first row.
    q0: usize,
    /// Reference of the tile's first column.
    start: usize,
    heaps: &'h mut [Heap<'s>],
    queries: Matrix<'t>,
    /// The reference block's rows (`width x dim`).
    block: &'t [f32],
    dim: usize,
    q_norms: &'t [f32],
    /// The reference block's norm terms.
    r_norms: &'t [f32],
    /// The pads of the tile's values.
    pads: Pads<'t>,
    leave_one_out: bool,
}

impl Kernel for Select<'_, '_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let Select {
            rank,
            tile,
            width,
            masked,
            rows,
            q0,
            start,
            heaps,
            queries,
            block,
            dim,
            q_norms,
            r_norms,
            pads,
            leave_one_out,
        } = self;
        if dim == 0 {
            return;
        }
        for (i, heap) in heaps.iter_mut().enumerate() {
            if heap.dist.is_empty() {
                continue;
            }
            let q = q0 + i;
            let (Some(a), Some(&na)) = (queries.row(q), q_norms.get(q)) else {
                continue;
            };
            let skip = if leave_one_out {
                q.wrapping_sub(start)
            } else {
                usize::MAX
            };
            let pad = pads.pad(rank, i, na);
            let ctx = Pair {
                rank,
                a,
                na,
                block,
                dim,
                r_norms,
                start,
                skip,
                pad,
                cap: f32::INFINITY,
            };
            if width == 0 {
                // Small query block: every candidate in the direct form, row by row (four
                // rows interleaved measured twice as slow: the single sequential stream
                // is what the gallery's memory traffic wants).
                let mut rr = 0;
                while rr < rows {
                    ctx.push(s, rr, heap);
                    rr += 1;
                }
                continue;
            }
            if masked {
                // Every kept candidate in the direct form (the bar they passed may have
                // dropped since; the heap decides).
                let chunks = width.div_ceil(LANES);
                let words = bytemuck::try_cast_slice::<f32, u32>(tile).unwrap_or_default();
                let row = words.get(i * chunks..(i + 1) * chunks).unwrap_or_default();
                // Most rows keep nothing in most blocks: one vectorised test first.
                if row.iter().fold(0, |a, &w| a | w) == 0 {
                    continue;
                }
                // The kept candidates' direct distances are computed a batch at a time,
                // then offered in index order: the distances do not wait on each other
                // nor on the heap's branches, so they overlap.
                let mut batch = [0_u16; BATCH];
                let mut n = 0;
                for (c, &w) in row.iter().enumerate() {
                    let mut kept = w;
                    while kept != 0 {
                        let bit = kept.trailing_zeros() as usize;
                        kept &= kept - 1;
                        if let Some(slot) = batch.get_mut(n) {
                            // `c * LANES + bit < REFERENCE_BLOCK <= u16::MAX`.
                            *slot = (c * LANES + bit) as u16;
                            n += 1;
                        }
                    }
                    if n + LANES > BATCH || c + 1 == row.len() {
                        ctx.push_batch(s, batch.get(..n).unwrap_or_default(), heap);
                        n = 0;
                    }
                }
                continue;
            }
            let row = tile.get(i * width..(i + 1) * width).unwrap_or_default();
            // A heap that is not full yet (in the first block) would take every candidate
            // until it is, then every improvement: about `k ln(width / k)` direct
            // distances. A bound `F` on the block's own `k`-th smallest value caps the bar
            // instead: each of the block's true `k` nearest has a value within `full` of
            // its direct distance, which is at most `F + full`, so none is above
            // `F + 2 full` (a third `full` covers the rounding of the sum). With the query
            // itself among the block's rows, its `k + 1`-th. (The int8 tile lowers each
            // value by its column's share `s_j` of `full`, so a value `v` is within
            // `[v - pad, v + pad + 2 s_j]` of its direct distance: the same bound.)
            let (cap, above) = if heap.len() < heap.dist.len() {
                let own = usize::from(skip < rows);
                let f = kth_bound(row, heap.dist.len() + own);
                // (`full`: the values may be lowered by a share of the pad per column.)
                let full = pads.full(rank, i, na);
                // In two passes: the candidates whose values are not above `F` (the
                // block's `k` nearest by value and a few more) fill the heap, whose bar
                // then rejects most of the rest up to the cap. In index order, the heap
                // would fill with whichever candidates come first, and every later
                // improvement would cost a direct distance.
                // (Not a closure: the sweep must be inlined into the backend's code.)
                let above = if f.is_finite() {
                    Pair { cap: f, ..ctx }.sweep(s, row, heap, None);
                    Some(f)
                } else {
                    None
                };
                (f + full + full + full, above)
            } else {
                (f32::INFINITY, None)
            };
            Pair { cap, ..ctx }.sweep(s, row, heap, above);
        }
    }
}

/// One query against one reference block, for the direct recomputation.
#[derive(Clone, Copy)]
struct Pair<'t> {
    rank: Rank,
    /// The query row and its norm term.
    a: &'t [f32],
    na: f32,
    /// The reference block (`dim` per row) and its norm terms.
    block: &'t [f32],
    dim: usize,
    r_norms: &'t [f32],
    /// Reference index of the block's first row.
    start: usize,
    /// Block row that is the query itself (leave-one-out), else out of range.
    skip: usize,
    pad: f32,
    /// No candidate of the block above it can enter the heap (`+inf` for no such
    /// bound): see the first block's selection.
    cap: f32,
}

impl Pair<'_> {
    /// Offers to `heap` the candidates of `row` (Gram-form values of the block's rows)
    /// that are not above the bar, each recomputed in the direct form; with `above =
    /// Some(f)`, only those whose values are above `f` (a second pass: the first, with
    /// `None`, offered the others, in index order).
    #[inline(always)]
    fn sweep<S: Simd>(self, s: S, row: &[f32], heap: &mut Heap<'_>, above: Option<f32>) {
        let mut bar = self.bar(heap);
        let (chunks, tail) = row.as_chunks::<LANES>();
        let mut r0 = 0;
        for chunk in chunks {
            bar = self.sweep_part(s, chunk, r0, heap, above, bar);
            r0 += LANES;
        }
        self.sweep_part(s, tail, r0, heap, above, bar);
    }

    /// [`Pair::sweep`] of `values` (at most [`LANES`], of rows `r0..`) from `bar`;
    /// returns the bar after them. (A method, not a closure: it must be inlined into
    /// the backend's code.)
    #[inline(always)]
    fn sweep_part<S: Simd>(
        self,
        s: S,
        values: &[f32],
        r0: usize,
        heap: &mut Heap<'_>,
        above: Option<f32>,
        bar: f32,
    ) -> f32 {
        let mut bar = bar;
        let lower = above.unwrap_or(f32::NEG_INFINITY);
        // Branch-free over the values (one vector compare into a bit mask); NaN is never
        // rejected, and left to the first pass.
        let mut kept = 0_u32;
        for (bit, &v) in values.iter().enumerate() {
            // Not `v <= bar`: NaN must be kept.
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            let keep = !(v > bar) && (above.is_none() || v > lower);
            kept |= u32::from(keep) << bit;
        }
        // Only the kept candidates, each checked again against the bar, which drops as
        // the heap improves.
        while kept != 0 {
            let bit = kept.trailing_zeros() as usize;
            kept &= kept - 1;
            if values.get(bit).is_some_and(|&v| v > bar) {
                continue;
            }
            if above.is_none() {
                self.push(s, r0 + bit, heap);
            } else {
                // Below rows the first pass already offered.
                self.push_any(s, r0 + bit, heap);
            }
            bar = self.bar(heap);
        }
        bar
    }

    /// The bar of the rejection compare: the heap's, widened by the pad, within the cap.
    #[inline(always)]
    fn bar(self, heap: &Heap<'_>) -> f32 {
        (heap.bar() + self.pad).min(self.cap)
    }
}

/// An upper bound on the `k`-th smallest number of `values` (NaN ignored), `+inf` unless
/// `1 <= k <= 16`: the `k`-th smallest of the 16 lane minima, each the minimum of a
/// disjoint subset of `values` (the `k`-th smallest of a subset is at least that of the
/// whole). One vectorised pass and a sort of 16 numbers, where the exact selection
/// measured as costly as the pushes it saved.
#[inline(always)]
fn kth_bound(values: &[f32], k: usize) -> f32 {
    if k == 0 || k > LANES {
        return f32::INFINITY;
    }
    let mut m = [f32::INFINITY; LANES];
    let (chunks, tail) = values.as_chunks::<LANES>();
    for chunk in chunks {
        for (mi, &v) in m.iter_mut().zip(chunk) {
            // `minps` semantics: NaN never replaces a number.
            *mi = if v < *mi { v } else { *mi };
        }
    }
    for (mi, &v) in m.iter_mut().zip(tail) {
        *mi = if v < *mi { v } else { *mi };
    }
    // Insertion sort of the 16 minima (none is NaN).
    for j in 1..LANES {
        let mut p = j;
        while p > 0 {
            let (Some(&lo), Some(&hi)) = (m.get(p - 1), m.get(p)) else {
                break;
            };
            if lo <= hi {
                break;
            }
            m.swap(p - 1, p);
            p -= 1;
        }
    }
    m.get(k - 1).copied().unwrap_or(f32::INFINITY)
}

impl Pair<'_> {
    /// Offers block rows `rows` (increasing, each below the block's length) to `heap`,
    /// as [`Pair::push`] does one by one: all their direct distances first, then the
    /// offers, in order.
    #[inline(always)]
    fn push_batch<S: Simd>(self, s: S, rows: &[u16], heap: &mut Heap<'_>) {
        // (Not through `Pair::distance`: an array of options measured 2 % slower on R2.)
        let mut dists = [0.0_f32; BATCH];
        for (dd, &rr) in dists.iter_mut().zip(rows) {
            let rr = usize::from(rr);
            if let (Some(b), Some(&nb)) = (
                self.block.get(rr * self.dim..(rr + 1) * self.dim),
                self.r_norms.get(rr),
            ) {
                *dd = direct(s, self.rank, self.a, b, self.na, nb);
            }
        }
        for (&dd, &rr) in dists.iter().zip(rows) {
            let rr = usize::from(rr);
            // `start + rr < m <= u32::MAX`, checked on entry.
            if rr != self.skip && rr < self.r_norms.len() {
                heap.push(dd, (self.start + rr) as u32);
            }
        }
    }

    /// Offers block row `rr` (unless it is the query itself) to `heap`, in the direct form;
    /// `rr` above every row offered before.
    #[inline(always)]
    fn push<S: Simd>(self, s: S, rr: usize, heap: &mut Heap<'_>) {
        if let Some((dd, j)) = self.distance(s, rr) {
            heap.push(dd, j);
        }
    }

    /// [`Pair::push`] of a row that may be below rows offered before.
    #[inline(always)]
    fn push_any<S: Simd>(self, s: S, rr: usize, heap: &mut Heap<'_>) {
        if let Some((dd, j)) = self.distance(s, rr) {
            heap.push_any(dd, j);
        }
    }

    /// Block row `rr`'s direct distance and reference index, unless it is the query
    /// itself.
    #[inline(always)]
    fn distance<S: Simd>(self, s: S, rr: usize) -> Option<(f32, u32)> {
        if rr == self.skip {
            return None;
        }
        let b = self.block.get(rr * self.dim..(rr + 1) * self.dim)?;
        let nb = *self.r_norms.get(rr)?;
        // `start + rr < m <= u32::MAX`, checked on entry.
        Some((
            direct(s, self.rank, self.a, b, self.na, nb),
            (self.start + rr) as u32,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    /// The bound is never below the exact `k`-th smallest number (NaN ignored), for every
    /// `k` it handles, lengths with and without a tail, ties and NaN; `+inf` outside.
    #[test]
    fn kth_bound_is_an_upper_bound() {
        for len in [1_usize, 5, 16, 17, 40, 512, 515] {
            for seed in 0..4_usize {
                let mut values: Vec<f32> = (0..len)
                    .map(|i| ((i * 7919 + seed * 104_729) % 97) as f32 / 8.0 - 3.0)
                    .collect();
                if seed == 3 {
                    for v in values.iter_mut().step_by(3) {
                        *v = f32::NAN;
                    }
                }
                let mut numbers: Vec<f32> =
                    values.iter().copied().filter(|v| !v.is_nan()).collect();
                numbers.sort_by(f32::total_cmp);
                for k in 1..=LANES {
                    let bound = kth_bound(&values, k);
                    let exact = numbers.get(k - 1).copied().unwrap_or(f32::INFINITY);
                    assert!(
                        bound >= exact,
                        "len {len} seed {seed} k {k}: {bound} < {exact}"
                    );
                }
                assert_eq!(kth_bound(&values, 0), f32::INFINITY);
                assert_eq!(kth_bound(&values, LANES + 1), f32::INFINITY);
            }
        }
        // With a number in every lane, the bound of `k = 1` is the minimum itself.
        let values: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0).abs()).collect();
        assert_eq!(kth_bound(&values, 1), 0.0);
    }
}
