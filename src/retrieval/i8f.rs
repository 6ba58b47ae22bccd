//! The int8 filter of the streaming search: on CPUs with the AVX-512 VNNI dot product
//! (`vpdpbusd`, four int8 products per lane, twice the bf16 rate), the rejection tile is
//! computed from rows quantized to int8 with a per-row scale, and a pad measured from
//! the rows' own quantization residuals keeps the rejection sound. As with the bf16
//! filter, every candidate the bar keeps is recomputed in the direct form from the `f32`
//! rows, so the neighbours and distances are unchanged.
//!
//! A row `x` (the row itself, or for cosine the row divided by its clamped norm) gets the
//! scale `s = max |x_k| / 127` and the codes `q_k = round(x_k / s)` in `[-127, 127]`; its
//! residual `e = x - s q` has a Euclidean norm of about `s sqrt(d / 12)`. The packing
//! measures it: `eps` is an upper bound on `|e|` (see [`residual_bound`]). The filter's
//! dot product `s_a s_b <q_a, q_b>` (exact in `i32`, then two `f32` roundings) then
//! differs from `<a, b>` by at most `eps_a |b| + (|a| + eps_a) eps_b`
//! (`<a, b> - <â, b̂> = <e_a, b> + <â, e_b>`, Cauchy-Schwarz twice), which
//! [`quant_pad`] turns into the pad of one query against a block.
//!
//! Rows are packed in panels of 16, as words of four codes: word `p * 16 + i` of a panel
//! holds codes `4p..4p + 4` of the panel's row `i`, lowest byte first, 0 past `d`; the
//! queries' codes are stored as unsigned `q + 128` (`vpdpbusd`'s unsigned side; the tile
//! subtracts 128 times each column's code sum). A row whose largest magnitude is not
//! finite or outside `[2^-60, 2^60]` (zero allowed), or whose norm term is not finite,
//! gets a NaN scale: its filter values are NaN, which the bar never rejects, so it is
//! always recomputed in the direct form.

use super::search::Rank;
use crate::math;
use crate::simd::{self, Backend, Kernel, RowCode, RowScan, Simd};

/// Rows per panel.
const PANEL: usize = 16;

/// Largest dimension the filter takes: the accumulators stay within `i32` (`383 * 127 *
/// 4096 < 2^31`) and the rounding terms of [`residual_bound`] and [`quant_pad`] stay
/// within their margins. Wider rows use the bf16 filter.
pub(super) const MAX_DIM: usize = 4096;

/// Smallest nonzero row maximum the filter takes (`2^-60`: the scale stays normal).
const MIN_MAGNITUDE: f32 = 8.673_617e-19;
/// Largest row maximum the filter takes (`2^60`).
const MAX_MAGNITUDE: f32 = 1.152_921_5e18;

/// `1.5 * 2^23`: adding and subtracting it rounds an `f32` of magnitude below `2^22` to
/// an integer, ties to even.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Per-row `f32` words after the codes: scale, norm term, residual bound, code sum.
const ROW_WORDS: usize = 4;

/// `f32` words to pack `rows` rows of dimension `dim`.
pub(super) const fn pack_len(rows: usize, dim: usize) -> usize {
    let padded = rows.div_ceil(PANEL).saturating_mul(PANEL);
    padded
        .saturating_mul(dim.div_ceil(4))
        .saturating_add(padded.saturating_mul(ROW_WORDS))
}

/// Whether the search uses the int8 filter at dimension `dim`: at most [`MAX_DIM`], and
/// its packing no larger than the bf16 filter's, whose workspace it shares (from
/// `dim = 11`: a row's `ceil(dim / 4)` code words and four row words against
/// `ceil(dim / 2)` words and one).
pub(super) const fn usable(dim: usize) -> bool {
    dim <= MAX_DIM && pack_len(PANEL, dim) <= super::bf16::pack_len(PANEL, dim)
}

/// Rows packed for the int8 filter.
#[derive(Clone, Copy, Debug)]
pub(super) struct Packed<'p> {
    /// The codes, in panels.
    pub(super) words: &'p [u32],
    /// Per packed row: the scale `s` (NaN for a row the filter does not take).
    pub(super) scale: &'p [f32],
    /// Per packed row: the squared norm (Euclidean) or 0.
    pub(super) terms: &'p [f32],
    /// Per packed row: the bound on the residual's norm (`|x - s q|`, in the units of the
    /// dot product the filter approximates).
    pub(super) eps: &'p [f32],
    /// Per packed row: the sum of its codes (the offset's correction).
    pub(super) sums: &'p [i32],
    /// The largest residual bound of the packed rows (NaN ignored).
    pub(super) eps_max: f32,
    /// Words per code row (`dim.div_ceil(4)`).
    pub(super) quads: usize,
}

impl<'p> Packed<'p> {
    /// The rows `r0..` of a packing, `r0` a multiple of 16 (`eps_max` stays that of the
    /// whole packing, an upper bound).
    pub(super) fn rows_from(self, r0: usize) -> Packed<'p> {
        let panel = r0 / PANEL;
        let tail = |v: &'p [f32]| v.get(panel * PANEL..).unwrap_or_default();
        Packed {
            words: self
                .words
                .get(panel * PANEL * self.quads..)
                .unwrap_or_default(),
            scale: tail(self.scale),
            terms: tail(self.terms),
            eps: tail(self.eps),
            sums: self.sums.get(panel * PANEL..).unwrap_or_default(),
            ..self
        }
    }
}

/// The widest gap between the int8 filter's dot product and the exact one, for a query
/// with residual bound `eps_a` and norm term `na` against a block whose largest residual
/// bound is `eps_b` and largest norm term `nb_max`, in the units of the search's value:
/// twice the dot product's gap for the squared distance (norm terms squared norms), the
/// gap for the inner product (norm terms clamped norms, never below the true ones) and
/// for cosine (unit rows: norms at most 1). Widened by `2^-9` for the rounding of the
/// norm terms' square roots and of this sum (NaN stays NaN: nothing is rejected).
///
/// It is [`row_pad`] plus [`column_coef`] times `eps_b`; the search lowers each filter
/// value by its column's own share (the coefficient times the column's residual bound,
/// in the tile) and widens the bar by the row's share only.
#[inline(always)]
pub(super) fn quant_pad(rank: Rank, eps_a: f32, na: f32, eps_b: f32, nb_max: f32) -> f32 {
    row_pad(rank, eps_a, nb_max) + column_coef(rank, eps_a, na) * eps_b
}

/// `1 + 2^-9`: the widening of [`row_pad`] and [`column_coef`].
const GROW: f32 = 1.0 + 1.0 / 512.0;

/// The query's share of [`quant_pad`]: `2 eps_a sqrt(nb_max)` (squared distance),
/// `eps_a nb_max` (inner product) or `eps_a` (cosine), widened.
#[inline(always)]
pub(super) fn row_pad(rank: Rank, eps_a: f32, nb_max: f32) -> f32 {
    let gap = match rank {
        Rank::Sq => 2.0 * eps_a * math::sqrt(nb_max),
        Rank::NegDot => eps_a * nb_max,
        Rank::Cosine => eps_a,
    };
    gap * GROW
}

/// The coefficient of a column's residual bound in [`quant_pad`]: `2 (sqrt(na) + eps_a)`,
/// `na + eps_a` or `1 + eps_a`, widened.
#[inline(always)]
pub(super) fn column_coef(rank: Rank, eps_a: f32, na: f32) -> f32 {
    let c = match rank {
        Rank::Sq => 2.0 * (math::sqrt(na) + eps_a),
        Rank::NegDot => na + eps_a,
        Rank::Cosine => 1.0 + eps_a,
    };
    c * GROW
}

/// An upper bound on `|x - s q|` from `ss`, the `f32` sum of the squared residuals
/// `r_k = y_k - q_k` in code units (`y_k = x_k * (1 / s)` rounded, `q_k` its rounding to
/// an integer; the subtraction is exact). `y_k` is within `2^-16` of `x_k / s`
/// (`|x_k / s| <= 127 (1 + u)`, two roundings of relative `u = 2^-24`, plus `2^-149` for a
/// gradual underflow), so `|x / s - q| <= sqrt(ss) (1 + (d + 2) u) + d 2^-16`, the sum's
/// rounding within `1 + 2^-11` for `d <= MAX_DIM`; the product with `s` and its rounding
/// within another `2^-20`.
#[inline(always)]
fn residual_bound(s: f32, ss: f32, dim: usize) -> f32 {
    let units = math::sqrt(ss) * (1.0 + 1.0 / 2048.0) + dim as f32 * (1.0 / 32768.0);
    s * units * (1.0 + 1.0 / 1_048_576.0)
}

/// The norm terms of the rows [`pack`] packs: squared norms for Euclidean, clamped norms
/// for cosine and the inner product.
pub(super) enum Norms<'r> {
    /// Computed by the caller, one per row.
    Given(&'r [f32]),
    /// Computed by the packing into the slice (one per row), from the same pass over each
    /// row that finds its largest magnitude: the squared norms `sum x_i^2` over 16 lanes
    /// reduced pairwise (within the `d u` relative rounding any summation order keeps,
    /// which the search's pads assume). Euclidean only: the other metrics scale the row
    /// by its norm before that pass; [`pack`] returns `None` (and fills nothing) for them.
    Fill(&'r mut [f32]),
}

/// Packs the `count` rows of `rows` (`dim` each, `dim <= MAX_DIM`) with their norm terms
/// ([`Norms`]) into `ws` (at least [`pack_len`]`(count, dim)` elements); `offset` stores
/// the codes as unsigned `q + 128` (the tile's row side). `None` when `ws`, `rows` or
/// the norms to fill are too short.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack<'w>(
    backend: Backend,
    rank: Rank,
    rows: &[f32],
    dim: usize,
    count: usize,
    norms: Norms<'_>,
    offset: bool,
    ws: &'w mut [f32],
) -> Option<Packed<'w>> {
    backend.dispatch(Pack {
        backend,
        vectorised: true,
        rank,
        rows,
        dim,
        count,
        norms,
        offset,
        ws,
    })
}

/// [`pack`] as a kernel: compiled with the backend's features, so the quantization loop
/// vectorises.
struct Pack<'r, 'w> {
    backend: Backend,
    /// Whole panels of rows through [`simd::i8_scan_rows`] and [`simd::i8_code_rows`]
    /// where the backend has them (`false` only in tests: the portable loop throughout).
    vectorised: bool,
    rank: Rank,
    rows: &'r [f32],
    dim: usize,
    count: usize,
    norms: Norms<'r>,
    offset: bool,
    ws: &'w mut [f32],
}

impl<'w> Kernel for Pack<'_, 'w> {
    type Output = Option<Packed<'w>>;
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, _: S) -> Option<Packed<'w>> {
        pack_rows(self)
    }
}

/// Elements quantized per vectorised step.
const CHUNK: usize = 16;

#[inline(always)]
fn pack_rows<'w>(p: Pack<'_, 'w>) -> Option<Packed<'w>> {
    let Pack {
        backend,
        vectorised,
        rank,
        rows,
        dim,
        count,
        norms,
        offset,
        ws,
    } = p;
    if dim == 0 || dim > MAX_DIM || rows.len() < count.checked_mul(dim)? {
        return None;
    }
    let (given, fill) = match norms {
        Norms::Given(n) => (n, None),
        Norms::Fill(out) if rank == Rank::Sq && out.len() >= count => (&[][..], Some(out)),
        Norms::Fill(_) => return None,
    };
    let quads = dim.div_ceil(4);
    let padded = count.div_ceil(PANEL) * PANEL;
    let panel_len = quads * PANEL;
    let (scale, ws) = ws.split_at_mut_checked(padded)?;
    let (terms, ws) = ws.split_at_mut_checked(padded)?;
    let (eps, ws) = ws.split_at_mut_checked(padded)?;
    let (sums, ws) = ws.split_at_mut_checked(padded)?;
    let sums: &mut [i32] = bytemuck::try_cast_slice_mut(sums).ok()?;
    let words: &mut [u32] = bytemuck::try_cast_slice_mut(ws).ok()?;
    let words = words.get_mut(..padded / PANEL * panel_len)?;
    let flip = if offset { 0x8080_8080_u32 } else { 0 };
    let mut eps_max = 0.0_f32;
    let filling = fill.is_some();
    // Row `i` (empty past `count`).
    let row_of = |i: usize| {
        if i < count {
            rows.get(i * dim..(i + 1) * dim).unwrap_or_default()
        } else {
            &[]
        }
    };
    // The norm term of row `i`: given, or the squared norm the quantizer returns.
    let norm_of = |i: usize, sq_norm: f32| {
        if filling && i < count {
            sq_norm
        } else {
            given.get(i).copied().unwrap_or(f32::NAN)
        }
    };
    // The row quantized: `x = a` or, for cosine, `a / n` (as `a * (1 / n)`, within
    // `2 u |a / n| <= 2^-22` in norm of the exact unit row; added to `eps`).
    let unit_of = |i: usize| {
        if rank == Rank::Cosine {
            1.0 / given.get(i).copied().unwrap_or(f32::NAN)
        } else {
            1.0
        }
    };
    let mut out = Out {
        fill,
        scale,
        terms,
        eps,
        sums,
    };
    for panel in 0..padded / PANEL {
        let i0 = panel * PANEL;
        let pwords = words
            .get_mut(panel * panel_len..(panel + 1) * panel_len)
            .unwrap_or_default();
        // A whole panel of rows, vectorised: the first pass over all sixteen rows, their
        // scales, then the second pass.
        let whole = if vectorised && i0 + PANEL <= count {
            rows.get(i0 * dim..(i0 + PANEL) * dim)
        } else {
            None
        };
        if let Some(prows) = whole {
            let mut units = [1.0_f32; PANEL];
            for (r, u) in units.iter_mut().enumerate() {
                *u = unit_of(i0 + r);
            }
            let mut scans = [RowScan::default(); PANEL];
            let mut codes = [RowCode::default(); PANEL];
            let done = simd::i8_scan_rows(backend, prows, dim, &units, &mut scans) && {
                let mut invs = [0.0_f32; PANEL];
                for (r, (inv, sc)) in invs.iter_mut().zip(&scans).enumerate() {
                    *inv = inverse(sc.big, sc.finite, norm_of(i0 + r, sc.sq_norm), false).1;
                }
                simd::i8_code_rows(backend, prows, dim, &units, &invs, pwords, flip, &mut codes)
            };
            if done {
                for (r, (sc, co)) in scans.iter().zip(&codes).enumerate() {
                    let n = norm_of(i0 + r, sc.sq_norm);
                    out.finish(rank, dim, i0 + r, false, n, (sc, co), &mut eps_max);
                }
                continue;
            }
        }
        // Row by row, the portable loop.
        for r in 0..PANEL {
            let i = i0 + r;
            let row = row_of(i);
            let put = |words: &mut [u32], p: usize, w: u32| {
                if let Some(slot) = words.get_mut(p * PANEL + r) {
                    *slot = w ^ flip;
                }
            };
            let inv_of = |b, f, sq| inverse(b, f, norm_of(i, sq), row.is_empty()).1;
            let (sc, co) = quantize_row(row, unit_of(i), inv_of, &mut |p, w| put(pwords, p, w));
            if row.is_empty() {
                for p in 0..quads {
                    put(pwords, p, 0);
                }
            }
            let n = norm_of(i, sc.sq_norm);
            out.finish(rank, dim, i, row.is_empty(), n, (&sc, &co), &mut eps_max);
        }
    }
    let Out {
        scale,
        terms,
        eps,
        sums,
        ..
    } = out;
    Some(Packed {
        words,
        scale,
        terms,
        eps,
        sums,
        eps_max,
        quads,
    })
}

/// Whether the filter takes a row (with largest magnitude `big`, all elements finite or
/// not, norm term `n`, empty or not) and the reciprocal of its scale, `127 / big` (0 for
/// a zero row or one the filter does not take).
#[inline(always)]
fn inverse(big: f32, finite: bool, n: f32, empty: bool) -> (bool, f32) {
    let in_range = finite
        && (big == 0.0 || (MIN_MAGNITUDE..=MAX_MAGNITUDE).contains(&big))
        && n.is_finite()
        && !empty;
    let inv = if in_range && big > 0.0 {
        127.0 / big
    } else {
        0.0
    };
    (in_range, inv)
}

/// The per-row outputs of [`pack`] besides the codes.
struct Out<'f, 'w> {
    /// The squared norms to fill, when the packing computes them.
    fill: Option<&'f mut [f32]>,
    scale: &'w mut [f32],
    terms: &'w mut [f32],
    eps: &'w mut [f32],
    sums: &'w mut [i32],
}

impl Out<'_, '_> {
    /// Row `i`'s scale, norm term, residual bound and code sum from what quantizing it
    /// found (its two passes, with norm term `n`), its squared norm where the packing
    /// fills them; `eps_max` raised to its residual bound.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        rank: Rank,
        dim: usize,
        i: usize,
        empty: bool,
        n: f32,
        (scan, code): (&RowScan, &RowCode),
        eps_max: &mut f32,
    ) {
        if let Some(slot) = self.fill.as_mut().and_then(|f| f.get_mut(i)) {
            // (An empty row is one past the packed rows: its slot is not the packing's.)
            if !empty {
                *slot = n;
            }
        }
        let (in_range, inv) = inverse(scan.big, scan.finite, n, empty);
        let s = if inv > 0.0 { 1.0 / inv } else { 0.0 };
        // The codes' sum is exact in `f32` (below `127 * 4096 < 2^24`).
        let total = code.code_sum as i32;
        let (sc, e) = if !in_range {
            (f32::NAN, f32::NAN)
        } else if s == 0.0 {
            (0.0, 0.0)
        } else {
            let e = residual_bound(s, code.resid_sq, dim);
            // The unit row's own rounding (cosine).
            let e = if rank == Rank::Cosine {
                e + 2.384_185_8e-7 // 2^-22
            } else {
                e
            };
            (s, e)
        };
        *eps_max = eps_max.max(e);
        if let (Some(a), Some(b), Some(c), Some(d)) = (
            self.scale.get_mut(i),
            self.terms.get_mut(i),
            self.eps.get_mut(i),
            self.sums.get_mut(i),
        ) {
            *a = if empty { 0.0 } else { sc };
            *b = if rank == Rank::Sq && !empty { n } else { 0.0 };
            *c = if empty { 0.0 } else { e };
            *d = total;
        }
    }
}

/// One row of [`pack`], portable: the largest magnitude of `x = row * unit`, whether
/// every `x` is finite and the row's squared norm; then, with `inv = inv_of(big, finite,
/// sq_norm)`, the codes `round(x * inv)` clamped to `[-127, 127]`, passed four to a word
/// (lowest byte first) to `store` with the word's index, and the sums of the squared
/// residuals and of the codes; every sum over 16 lanes (so the loops vectorise) reduced
/// pairwise ([`lane_tree_sum`]). The reference of the vectorised passes
/// ([`simd::i8_scan_rows`], [`simd::i8_code_rows`]), which return the same numbers bit
/// for bit; on AVX-512 the packing takes those for each whole panel of 16 rows: the
/// first pass over all sixteen rows, their scales, then the second pass, with no call
/// and no scalar bookkeeping between a row's two passes (16 queries against R3's
/// 100,000-row gallery, most of it packing: 6.4 ms with a vectorised row quantizer
/// called row by row, 4.7-4.9 ms by panels, on an AVX-512 Xeon).
#[inline(always)]
fn quantize_row(
    row: &[f32],
    unit: f32,
    inv_of: impl FnOnce(f32, bool, f32) -> f32,
    store: &mut impl FnMut(usize, u32),
) -> (RowScan, RowCode) {
    // Lane-wise largest magnitude, `x * 0` summed (NaN exactly when an element is not
    // finite) and the squared norm (fixed-width lanes, so the loop vectorises).
    let (mut big, mut poison) = ([0.0_f32; CHUNK], [0.0_f32; CHUNK]);
    let mut sq = [0.0_f32; CHUNK];
    let (chunks, rest) = row.as_chunks::<CHUNK>();
    let scan = |v: f32, b: &mut f32, z: &mut f32, s: &mut f32| {
        let m = (v * unit).abs();
        *b = if m > *b { m } else { *b };
        *z += m * 0.0;
        *s += v * v;
    };
    for c in chunks {
        for (((b, z), s), &v) in big
            .iter_mut()
            .zip(poison.iter_mut())
            .zip(sq.iter_mut())
            .zip(c)
        {
            scan(v, b, z, s);
        }
    }
    for (&v, ((b, z), s)) in rest
        .iter()
        .zip(big.iter_mut().zip(poison.iter_mut()).zip(sq.iter_mut()))
    {
        scan(v, b, z, s);
    }
    let big = big.iter().fold(0.0_f32, |a, &b| if b > a { b } else { a });
    let finite = poison.iter().sum::<f32>() == 0.0;
    let sq_norm = lane_tree_sum(sq);
    let inv = inv_of(big, finite, sq_norm);
    // `y = x * (1 / s)`; `y + M` (`M = 1.5 * 2^23`) holds `round(y)` in its low mantissa
    // bits (two's complement in the low byte), clamped to `M -+ 127`.
    let quant = |v: f32| {
        let y = (v * unit) * inv;
        let r = y + ROUND_MAGIC;
        let r = if r > ROUND_MAGIC + 127.0 {
            ROUND_MAGIC + 127.0
        } else {
            r
        };
        let r = if r < ROUND_MAGIC - 127.0 {
            ROUND_MAGIC - 127.0
        } else {
            r
        };
        let t = r - ROUND_MAGIC;
        (y - t, t, r.to_bits().to_le_bytes()[0])
    };
    let (mut ss, mut total) = ([0.0_f32; CHUNK], [0.0_f32; CHUNK]);
    let mut bytes = [0_u8; CHUNK];
    for (ci, c) in chunks.iter().enumerate() {
        for (((e, t), byte), &v) in ss
            .iter_mut()
            .zip(total.iter_mut())
            .zip(bytes.iter_mut())
            .zip(c)
        {
            let (d, q, b) = quant(v);
            *e += d * d;
            *t += q;
            *byte = b;
        }
        for (w, quad) in bytes.as_chunks::<4>().0.iter().enumerate() {
            store(ci * CHUNK / 4 + w, u32::from_le_bytes(*quad));
        }
    }
    let mut quad = [0_u8; 4];
    let base = chunks.len() * CHUNK;
    for (k, &v) in rest.iter().enumerate() {
        let (d, q, b) = quant(v);
        if let (Some(e), Some(t)) = (ss.get_mut(k), total.get_mut(k)) {
            *e += d * d;
            *t += q;
        }
        if let Some(slot) = quad.get_mut(k % 4) {
            *slot = b;
        }
        if k % 4 == 3 || k + 1 == rest.len() {
            store((base + k) / 4, u32::from_le_bytes(quad));
            quad = [0; 4];
        }
    }
    (
        RowScan {
            big,
            finite,
            sq_norm,
        },
        RowCode {
            resid_sq: lane_tree_sum(ss),
            code_sum: lane_tree_sum(total),
        },
    )
}

/// The sum of 16 lanes pairwise (`i` and `i + 8`, then `i + 4`, `i + 2`, `i + 1`): the
/// order of the vectorised quantizer's reduction.
#[inline(always)]
fn lane_tree_sum(mut v: [f32; CHUNK]) -> f32 {
    let mut half = CHUNK / 2;
    while half > 0 {
        let (lo, hi) = v.split_at_mut(half);
        for (a, &b) in lo.iter_mut().zip(hi.iter()) {
            *a += b;
        }
        half /= 2;
    }
    v[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    /// Row `i`'s codes, scale, residual bound and code sum, from a packing.
    fn row_of(p: &Packed<'_>, i: usize, dim: usize, offset: bool) -> (Vec<i32>, f32, f32, i32) {
        let codes = (0..dim)
            .map(|k| {
                let w = p.words[(i / PANEL) * PANEL * p.quads + (k / 4) * PANEL + i % PANEL];
                let byte = (w >> (8 * (k % 4))) as u8 ^ if offset { 0x80 } else { 0 };
                i32::from(byte.cast_signed())
            })
            .collect();
        (codes, p.scale[i], p.eps[i], p.sums[i])
    }

    /// Rows of every kind: spread, one outlier (most codes 0, residuals up to half a
    /// step), elements on half steps (ties), tiny and huge magnitudes, zero, and rows the
    /// filter must refuse (NaN, infinity, out of range).
    fn rows(dim: usize) -> Vec<Vec<f32>> {
        let spread: Vec<f32> = (0..dim)
            .map(|k| ((k * 7919 % 211) as f32 - 105.0) / 37.0)
            .collect();
        let mut outlier: Vec<f32> = (0..dim).map(|k| ((k % 5) as f32 - 2.0) * 0.031).collect();
        outlier[dim / 2] = 90.0;
        let halves: Vec<f32> = (0..dim)
            .map(|k| if k == 0 { 127.0 } else { (k % 9) as f32 + 0.5 })
            .collect();
        let mut out = vec![
            spread.clone(),
            outlier,
            halves,
            spread.iter().map(|v| v * 1.0e-15).collect(),
            spread.iter().map(|v| v * 1.0e15).collect(),
            vec![0.0; dim],
        ];
        for special in [f32::NAN, f32::INFINITY, 1.0e30, 1.0e-30] {
            let mut r = spread.clone();
            r[dim - 1] = special;
            if special == 1.0e-30 {
                r = vec![0.0; dim];
                r[0] = special;
            }
            out.push(r);
        }
        // More than a whole panel (the vectorised packing takes whole panels of 16 rows),
        // then a partial one: the rows again, negated and scaled, then the first six.
        let again: Vec<Vec<f32>> = out
            .iter()
            .map(|r| r.iter().map(|v| v * -1.5).collect())
            .chain(out.iter().take(6).cloned())
            .collect();
        out.extend(again);
        out
    }

    /// [`pack_rows`] of `count` rows with the active backend; `how` is the ranking, the
    /// offset and whether the vectorised quantizer may run.
    fn pack_test<'w>(
        flat: &[f32],
        dim: usize,
        count: usize,
        norms: Norms<'_>,
        how: (Rank, bool, bool),
        ws: &'w mut [f32],
    ) -> Option<Packed<'w>> {
        let (rank, offset, vectorised) = how;
        pack_rows(Pack {
            backend: Backend::active(),
            vectorised,
            rank,
            rows: flat,
            dim,
            count,
            norms,
            offset,
            ws,
        })
    }

    /// The norm terms the search passes for `rows`: squared norms, or clamped norms.
    fn norm_terms(rows: &[Vec<f32>], rank: Rank) -> Vec<f32> {
        rows.iter()
            .map(|r| {
                let n = norm(r) as f32;
                match rank {
                    Rank::Sq => n * n,
                    _ => n.max(1.0e-12),
                }
            })
            .collect()
    }

    fn norm(v: &[f32]) -> f64 {
        v.iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }

    /// The bit patterns of `v`, for bit-for-bit comparisons (NaN included).
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// [`rows`] cut to `dim` elements (`rows(2)` for `dim = 1`), and flattened.
    fn rows_of_dim(dim: usize) -> (Vec<Vec<f32>>, Vec<f32>) {
        let mut rows = rows(dim.max(2));
        for r in &mut rows {
            r.truncate(dim);
        }
        let flat = rows.iter().flatten().copied().collect();
        (rows, flat)
    }

    /// The vectorised row quantizer (where the CPU has it) writes the words, scales,
    /// norm terms, residual bounds and code sums of the portable loop, bit for bit: every
    /// dimension up to 70 and a few wider, every kind of row (refused ones included),
    /// every ranking, both sides, a whole panel and a partial one.
    #[test]
    fn vectorised_rows_match_the_portable_loop() {
        let mut dims: Vec<usize> = (1..=70).collect();
        dims.extend([127, 128, 129, 200, 4096]);
        for dim in dims {
            let (rows, flat) = rows_of_dim(dim);
            let count = rows.len();
            for rank in [Rank::Sq, Rank::Cosine, Rank::NegDot] {
                let mut norms = norm_terms(&rows, rank);
                // A norm term the filter refuses, on a finite row.
                norms[0] = f32::INFINITY;
                for offset in [false, true] {
                    let run = |vectorised: bool| {
                        let mut ws = vec![f32::NAN; pack_len(count, dim)];
                        let p = pack_test(
                            &flat,
                            dim,
                            count,
                            Norms::Given(&norms),
                            (rank, offset, vectorised),
                            &mut ws,
                        )
                        .map(|p| p.eps_max.to_bits());
                        (p, bits(&ws))
                    };
                    assert_eq!(run(true), run(false), "{rank:?} d {dim} offset {offset}");
                }
            }
        }
    }

    /// Squared norms the packing computes (`Norms::Fill`) are the same bit for bit from
    /// the vectorised quantizer and the portable loop, within the `d u` relative rounding
    /// of the exact ones (infinite or NaN exactly for rows whose squares overflow or are
    /// not finite), and the packing is the one the same norms given would make. The other
    /// metrics refuse to fill (they scale each row by its norm first) and write nothing.
    #[test]
    fn filled_norms_match_the_portable_loop_and_the_given_ones() {
        let mut dims: Vec<usize> = (1..=40).collect();
        dims.extend([64, 127, 128, 129, 4096]);
        for dim in dims {
            let (rows, flat) = rows_of_dim(dim);
            let count = rows.len();
            for offset in [false, true] {
                let run = |vectorised: bool, given: Option<&[f32]>| {
                    let mut ws = vec![f32::NAN; pack_len(count, dim)];
                    let mut filled = vec![f32::NAN; count];
                    let norms = match given {
                        Some(n) => Norms::Given(n),
                        None => Norms::Fill(&mut filled),
                    };
                    let how = (Rank::Sq, offset, vectorised);
                    let p = pack_test(&flat, dim, count, norms, how, &mut ws);
                    let p = p.map(|p| p.eps_max.to_bits());
                    (p, bits(&ws), filled)
                };
                let (p, ws, filled) = run(true, None);
                assert!(p.is_some(), "d {dim}");
                let (p1, ws1, filled1) = run(false, None);
                assert_eq!((p, &ws), (p1, &ws1), "d {dim} offset {offset}");
                assert_eq!(bits(&filled), bits(&filled1), "d {dim}");
                let (p2, ws2, _) = run(true, Some(&filled));
                assert_eq!((p, &ws), (p2, &ws2), "d {dim} offset {offset}");
                for (row, &n) in rows.iter().zip(&filled) {
                    let exact: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                    if !exact.is_finite() || exact > f64::from(f32::MAX) {
                        assert!(!n.is_finite(), "d {dim}: {n} for {exact}");
                        continue;
                    }
                    let tol = (dim as f64 + 4.0) * f64::from(f32::EPSILON) / 2.0 * exact
                        + dim as f64 * 1.0e-45;
                    assert!(
                        (f64::from(n) - exact).abs() <= tol,
                        "d {dim}: {n} vs {exact}"
                    );
                }
            }
            for rank in [Rank::Cosine, Rank::NegDot] {
                let mut ws = vec![f32::NAN; pack_len(count, dim)];
                let mut filled = vec![7.0_f32; count];
                let how = (rank, false, true);
                let p = pack_test(&flat, dim, count, Norms::Fill(&mut filled), how, &mut ws);
                assert!(p.is_none() && filled.iter().all(|&n| n == 7.0), "{rank:?}");
            }
        }
    }

    /// The packing's codes and scales reconstruct each row within its residual bound
    /// (exact `f64` arithmetic), the code sums are the codes' sums, and the rows the
    /// filter cannot take get a NaN scale; for both sides (offset codes) and cosine's
    /// unit rows.
    #[test]
    fn residual_bounds_hold() {
        for dim in [12_usize, 13, 16, 33, 64, 130] {
            let rows = rows(dim);
            let count = rows.len();
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            for rank in [Rank::Sq, Rank::Cosine, Rank::NegDot] {
                let norms = norm_terms(&rows, rank);
                for offset in [false, true] {
                    let mut ws = vec![f32::NAN; pack_len(count, dim)];
                    let packed = pack_test(
                        &flat,
                        dim,
                        count,
                        Norms::Given(&norms),
                        (rank, offset, true),
                        &mut ws,
                    );
                    assert!(packed.is_some());
                    let Some(p) = packed else { return };
                    let mut eps_max = 0.0_f32;
                    for (i, row) in rows.iter().enumerate() {
                        let (codes, s, eps, sum) = row_of(&p, i, dim, offset);
                        let refused = !row.iter().all(|v| v.is_finite())
                            || !norms[i].is_finite()
                            // Cosine quantizes the unit row, always in range.
                            || (rank != Rank::Cosine
                                && (row.iter().any(|&v| v.abs() > 1.0e29)
                                    || (row.iter().any(|&v| v != 0.0)
                                        && row.iter().all(|&v| v.abs() < 1.0e-20))));
                        if refused {
                            assert!(s.is_nan() && eps.is_nan(), "{rank:?} d {dim} row {i}");
                            continue;
                        }
                        assert!(codes.iter().all(|c| c.abs() <= 127));
                        assert_eq!(sum, codes.iter().sum::<i32>(), "row {i}");
                        let unit = if rank == Rank::Cosine {
                            f64::from(norms[i])
                        } else {
                            1.0
                        };
                        let residual = row
                            .iter()
                            .zip(&codes)
                            .map(|(&x, &c)| {
                                let e = f64::from(x) / unit - f64::from(s) * f64::from(c);
                                e * e
                            })
                            .sum::<f64>()
                            .sqrt();
                        assert!(
                            residual <= f64::from(eps),
                            "{rank:?} d {dim} row {i}: residual {residual} above {eps}"
                        );
                        // Not loose either: within twice the typical residual's bound.
                        let scale_rows = f64::from(s) * (dim as f64).sqrt();
                        assert!(f64::from(eps) <= scale_rows + 1.0e-6, "row {i}");
                        eps_max = eps_max.max(eps);
                    }
                    assert_eq!(p.eps_max, eps_max, "{rank:?} d {dim}");
                }
            }
        }
    }

    /// The dimensions the search takes the int8 filter at, as the retrieval docs state.
    #[test]
    fn usable_from_eleven_to_max_dim() {
        assert!((1..=10).all(|d| !usable(d)));
        assert!((11..=MAX_DIM).all(usable));
        assert!(!usable(MAX_DIM + 1));
    }

    /// The pad bounds the gap between the exact inner product and the one the filter
    /// computes from the codes, on every pair of rows, including each row against its
    /// own residual (the direction where Cauchy-Schwarz is tight).
    #[test]
    fn the_pad_bounds_the_dot_product_gap() {
        for dim in [12_usize, 31, 64, 128] {
            let mut rows = rows(dim);
            rows.truncate(6);
            // Each row's residual direction as a row of its own.
            let count0 = rows.len();
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            let ones = vec![1.0_f32; count0];
            let mut ws = vec![0.0_f32; pack_len(count0, dim)];
            let how = (Rank::NegDot, false, true);
            let packed = pack_test(&flat, dim, count0, Norms::Given(&ones), how, &mut ws);
            assert!(packed.is_some());
            let Some(p) = packed else { return };
            for i in 0..count0 {
                let (codes, s, _, _) = row_of(&p, i, dim, false);
                let e: Vec<f32> = rows[i]
                    .iter()
                    .zip(&codes)
                    .map(|(&x, &c)| x - s * c as f32)
                    .collect();
                rows.push(e.iter().map(|v| v * 1.0e3).collect());
            }
            let count = rows.len();
            let flat: Vec<f32> = rows.iter().flatten().copied().collect();
            let norms: Vec<f32> = rows
                .iter()
                .map(|r| (norm(r) as f32).max(1.0e-12) * (1.0 + 1.0e-6))
                .collect();
            let mut ws = vec![0.0_f32; pack_len(count, dim)];
            let packed = pack_test(&flat, dim, count, Norms::Given(&norms), how, &mut ws);
            assert!(packed.is_some());
            let Some(p) = packed else { return };
            for i in 0..count {
                for j in 0..count {
                    let (qa, sa, ea, _) = row_of(&p, i, dim, false);
                    let (qb, sb, eb, _) = row_of(&p, j, dim, false);
                    let exact: f64 = rows[i]
                        .iter()
                        .zip(&rows[j])
                        .map(|(&x, &y)| f64::from(x) * f64::from(y))
                        .sum();
                    let codes: i64 = qa.iter().zip(&qb).map(|(&x, &y)| i64::from(x * y)).sum();
                    let filter = f64::from(sa * sb) * codes as f64;
                    let pad = quant_pad(Rank::NegDot, ea, norms[i], eb, norms[j]);
                    assert!(
                        (exact - filter).abs() <= f64::from(pad),
                        "d {dim} ({i}, {j}): gap {} above pad {pad}",
                        (exact - filter).abs()
                    );
                }
            }
        }
    }
}
