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

use super::heap::Heap;
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
/// mostly padding) and compute every distance in the direct form.
const SMALL_BLOCK: usize = 4;

/// Queries per block: the Gram tile's rows, packed once per reference block.
pub(super) const QUERY_BLOCK: usize = 128;
/// References per block: the Gram tile's columns, packed once per query block (about
/// 256 KiB at `d = 128`, so a packed block stays in the second cache level while every
/// query panel passes over it).
pub(super) const REFERENCE_BLOCK: usize = 512;

/// Candidates tested together by the rejection compare.
const LANES: usize = 16;

/// Workspace of the streaming pass for `queries` queries and `references` references of
/// dimension `dim`: both norm vectors, the heap sizes of [`Stream::knn`] (one `u32` per
/// query), the Gram tile and the microkernel's packing.
pub(super) const fn stream_len(queries: usize, references: usize, dim: usize) -> usize {
    let qb = min_len(QUERY_BLOCK, queries);
    let rb = min_len(REFERENCE_BLOCK, references);
    references
        .saturating_add(queries.saturating_mul(2))
        .saturating_add(qb.saturating_mul(rb))
        .saturating_add(cross_distances_rows_workspace_len(qb, rb, dim))
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

    /// The pad of one query (norm term `na`) against a block whose largest norm term is
    /// `nb_max`.
    #[inline(always)]
    fn pad(self, rank: Rank, na: f32, nb_max: f32) -> f32 {
        match rank {
            Rank::Cosine => self.coef,
            Rank::NegDot => self.coef * (na * nb_max) + self.tiny,
            Rank::Sq => self.coef * (na + nb_max) + self.tiny,
        }
    }
}

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
}

impl Stream<'_> {
    /// Streams every reference block past the queries `q0..q0 + heaps.len()`, offering
    /// query `q0 + i`'s candidates to `heaps[i]` (a heap of capacity 0 is skipped), then
    /// sorts every heap nearest first. `ws` holds at least the tile and the packing of
    /// [`stream_len`] (everything but the norms).
    pub(super) fn scan(&self, q0: usize, heaps: &mut [Heap<'_>], ws: &mut [f32]) {
        let m = self.shape.refs.rows();
        let mut start = 0;
        while start < m {
            self.scan_block(q0, heaps, start, ws);
            start += REFERENCE_BLOCK;
        }
        for heap in heaps.iter_mut() {
            heap.sort();
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
        let m = self.shape.refs.rows();
        if k == 0 {
            return;
        }
        for l in lens.iter_mut() {
            *l = 0;
        }
        let mut start = 0;
        while start < m {
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
                self.scan_block(q0, heaps, start, ws);
                for (l, heap) in block_lens.iter_mut().zip(heaps.iter()) {
                    // At most `k <= m <= u32::MAX`.
                    *l = heap.len() as u32;
                }
                q0 += qb;
            }
            start += REFERENCE_BLOCK;
        }
        for ((i_row, d_row), &l) in indices
            .chunks_exact_mut(k)
            .zip(distances.chunks_exact_mut(k))
            .zip(lens.iter())
        {
            Heap::resume(d_row, i_row, l as usize).sort();
        }
    }

    /// Offers the reference block starting at `start` (at most [`REFERENCE_BLOCK`] rows)
    /// to the heaps of queries `q0..q0 + heaps.len()`, as [`Stream::scan`] does, without
    /// sorting.
    pub(super) fn scan_block(
        &self,
        q0: usize,
        heaps: &mut [Heap<'_>],
        start: usize,
        ws: &mut [f32],
    ) {
        let refs = self.shape.refs;
        let d = refs.dim();
        let m = refs.rows();
        let qb = heaps.len();
        let q1 = q0 + qb;
        let width = min_len(REFERENCE_BLOCK, m);
        let (tile, pack) = ws.split_at_mut(min_len(qb.saturating_mul(width), ws.len()));
        let slack = Slack::new(self.rank, d);
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
        let (tile, width) = if qb < SMALL_BLOCK {
            (&mut [][..], 0)
        } else {
            let Some(tile) = tile.get_mut(..qb * rb) else {
                return;
            };
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
            (tile, rb)
        };
        let nb_max = r_norms.iter().fold(0.0_f32, |a, &b| a.max(b));
        self.backend.dispatch(Select {
            rank: self.rank,
            tile,
            width,
            rows: rb,
            q0,
            start,
            heaps,
            queries: self.queries,
            block: block.as_slice(),
            dim: d,
            q_norms: self.q_norms,
            r_norms,
            slack,
            nb_max,
            leave_one_out: self.shape.leave_one_out,
        });
    }
}

/// The selection of one tile: for every query row, the rejection compare, then the direct
/// distances of the survivors offered to the query's heap.
struct Select<'t, 'h, 's> {
    rank: Rank,
    /// `heaps.len() x width` Gram-form values; empty (`width == 0`) for a small query
    /// block, whose candidates are all computed in the direct form.
    tile: &'t [f32],
    width: usize,
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
    slack: Slack,
    /// Largest of `r_norms`.
    nb_max: f32,
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
            rows,
            q0,
            start,
            heaps,
            queries,
            block,
            dim,
            q_norms,
            r_norms,
            slack,
            nb_max,
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
            let pad = slack.pad(rank, na, nb_max);
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
            };
            if width == 0 {
                // Small query block: every candidate in the direct form.
                for rr in 0..rows {
                    ctx.push(s, rr, heap);
                }
                continue;
            }
            let row = tile.get(i * width..(i + 1) * width).unwrap_or_default();
            let mut bar = heap.bar() + pad;
            let (chunks, tail) = row.as_chunks::<LANES>();
            let mut r0 = 0;
            for chunk in chunks {
                // Branch-free over the chunk (one vector compare); NaN is never rejected.
                let mut hit = false;
                for &v in chunk {
                    // Not `v <= bar`: NaN must count as a hit.
                    #[allow(clippy::neg_cmp_op_on_partial_ord)]
                    let kept = !(v > bar);
                    hit |= kept;
                }
                if hit {
                    bar = ctx.offer(s, chunk, r0, heap, bar);
                }
                r0 += LANES;
            }
            ctx.offer(s, tail, r0, heap, bar);
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
}

impl Pair<'_> {
    /// Offers to `heap` the candidates of `values` (Gram-form values of block rows
    /// `r0..`) that are not above `bar`, each recomputed in the direct form; returns the
    /// bar after them.
    #[inline(always)]
    fn offer<S: Simd>(self, s: S, values: &[f32], r0: usize, heap: &mut Heap<'_>, bar: f32) -> f32 {
        let mut bar = bar;
        for (r, &v) in values.iter().enumerate() {
            let rr = r0 + r;
            if v > bar {
                continue;
            }
            self.push(s, rr, heap);
            bar = heap.bar() + self.pad;
        }
        bar
    }
}

impl Pair<'_> {
    /// Offers block row `rr` (unless it is the query itself) to `heap`, in the direct form.
    #[inline(always)]
    fn push<S: Simd>(self, s: S, rr: usize, heap: &mut Heap<'_>) {
        if rr == self.skip {
            return;
        }
        let (Some(b), Some(&nb)) = (
            self.block.get(rr * self.dim..(rr + 1) * self.dim),
            self.r_norms.get(rr),
        ) else {
            return;
        };
        let dd = direct(s, self.rank, self.a, b, self.na, nb);
        // `start + rr < m <= u32::MAX`, checked on entry.
        heap.push(dd, (self.start + rr) as u32);
    }
}
