//! The bf16 filter of the streaming search: on CPUs with the AVX-512 BF16 dot product,
//! the rejection tile is computed from rows rounded to bf16, at twice the multiply-add
//! rate of `f32`, and a wider bar (see [`super::search`]'s `Slack`) keeps the rejection
//! sound. The neighbours and distances are unchanged: every candidate the bar keeps is
//! still recomputed in the direct form from the `f32` rows.
//!
//! Rows are packed in panels of 16, as words of two bf16 values: word `p * 16 + i` of a
//! panel holds elements `2p` (low half) and `2p + 1` (high half, 0 past an odd `d`) of the
//! panel's row `i`; missing rows are zeros. Each packed row has one term: its squared norm
//! (Euclidean), the inverse of its clamped norm (cosine), or 0 (inner product).

use super::search::Rank;
use crate::simd::{Backend, Kernel, Simd};

/// Rows per panel.
const PANEL: usize = 16;

/// Smallest magnitude a nonzero element may have for the filter: below it the bf16
/// product could lose the element to the instruction's flushing of subnormal numbers
/// (an error relative to the other row's norm, not bounded by the filter's pad).
const MIN_MAGNITUDE: f32 = 7.888_609e-31; // 2^-100
/// Largest magnitude an element may have for the filter (no bf16 rounding to infinity,
/// no product overflow).
const MAX_MAGNITUDE: f32 = 1.152_921_5e18; // 2^60

/// `f32` words (packed words plus terms) to pack `rows` rows of dimension `dim`.
pub(super) const fn pack_len(rows: usize, dim: usize) -> usize {
    let padded = rows.div_ceil(PANEL).saturating_mul(PANEL);
    padded
        .saturating_mul(dim.div_ceil(2))
        .saturating_add(padded)
}

/// Pairs of a row converted per vectorised pass of [`pack_rows`].
const ROW_CHUNK: usize = 64;

/// `x` rounded to bf16 (to nearest, ties to even), as its 16 bits. Branch-free, so that
/// the packing loop vectorises; a NaN gives some bf16 pattern (the packing then reports
/// the row out of range anyway).
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16
}

/// Rows packed for the filter: `words` in panels, one term per packed row.
#[derive(Clone, Copy, Debug)]
pub(super) struct Packed<'p> {
    pub(super) words: &'p [u32],
    pub(super) terms: &'p [f32],
    /// Words per panel (`16 * pairs`).
    pub(super) panel_len: usize,
    pub(super) pairs: usize,
}

impl<'p> Packed<'p> {
    /// The rows `r0..` of a packing, `r0` a multiple of 16.
    pub(super) fn rows_from(self, r0: usize) -> Packed<'p> {
        let panel = r0 / PANEL;
        Packed {
            words: self.words.get(panel * self.panel_len..).unwrap_or_default(),
            terms: self.terms.get(panel * PANEL..).unwrap_or_default(),
            ..self
        }
    }
}

/// Packs the `count` rows of `rows` (`dim` each) with their norm terms `norms` (those the
/// search reads: squared norms, or clamped norms for cosine and the inner product) into
/// `ws` (at least [`pack_len`]`(count, dim)` elements). `None` when an element is not
/// finite or outside `[2^-100, 2^60]` in magnitude (zero allowed): the caller then uses
/// the `f32` tile.
pub(super) fn pack<'w>(
    backend: Backend,
    rank: Rank,
    rows: &[f32],
    dim: usize,
    count: usize,
    norms: &[f32],
    ws: &'w mut [f32],
) -> Option<Packed<'w>> {
    backend.dispatch(Pack {
        rank,
        rows,
        dim,
        count,
        norms,
        ws,
    })
}

/// [`pack`] as a kernel: compiled with the backend's features, so the conversion loops
/// vectorise.
struct Pack<'r, 'w> {
    rank: Rank,
    rows: &'r [f32],
    dim: usize,
    count: usize,
    norms: &'r [f32],
    ws: &'w mut [f32],
}

impl<'w> Kernel for Pack<'_, 'w> {
    type Output = Option<Packed<'w>>;
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, _: S) -> Option<Packed<'w>> {
        pack_rows(
            self.rank, self.rows, self.dim, self.count, self.norms, self.ws,
        )
    }
}

#[inline(always)]
fn pack_rows<'w>(
    rank: Rank,
    rows: &[f32],
    dim: usize,
    count: usize,
    norms: &[f32],
    ws: &'w mut [f32],
) -> Option<Packed<'w>> {
    if dim == 0 {
        return None;
    }
    let pairs = dim.div_ceil(2);
    let panels = count.div_ceil(PANEL);
    // Not 0 (`dim >= 1`), stated for the chunk iterator below.
    let panel_len = core::num::NonZeroUsize::new(pairs * PANEL)?.get();
    let (terms_ws, words_ws) = ws.split_at_mut_checked(panels * PANEL)?;
    let words: &mut [u32] = bytemuck::try_cast_slice_mut(words_ws).ok()?;
    let words = words.get_mut(..panels * panel_len)?;
    // Magnitudes seen: the largest, and the smallest nonzero one (lane-wise in `bv`,
    // `sv`, folded at the end).
    let (mut big, mut small) = (0.0_f32, f32::INFINITY);
    let (mut bv, mut sv) = ([0.0_f32; 16], [f32::INFINITY; 16]);
    // One row's words, computed in a vectorisable pass, then stored with the panel's
    // stride of 16 words.
    let mut tmp = [0_u32; ROW_CHUNK];
    for (pi, panel) in words.chunks_exact_mut(panel_len).enumerate() {
        for r in 0..PANEL {
            let i = pi * PANEL + r;
            let row = if i < count {
                rows.get(i * dim..(i + 1) * dim).unwrap_or_default()
            } else {
                &[]
            };
            if row.is_empty() {
                for p in 0..pairs {
                    if let Some(w) = panel.get_mut(p * PANEL + r) {
                        *w = 0;
                    }
                }
                continue;
            }
            // Lane-wise extremes (a fixed-width array, so the loop vectorises), then
            // folded; a NaN sticks in `big`.
            let (chunks, rest) = row.as_chunks::<16>();
            for c in chunks {
                for ((b, s), &v) in bv.iter_mut().zip(sv.iter_mut()).zip(c) {
                    let m = v.abs();
                    *b = if m > *b || m.is_nan() { m } else { *b };
                    *s = if m != 0.0 && m < *s { m } else { *s };
                }
            }
            for &v in rest {
                let m = v.abs();
                big = if m > big || m.is_nan() { m } else { big };
                small = if m != 0.0 && m < small { m } else { small };
            }
            let (full, odd) = row.as_chunks::<2>();
            let mut p0 = 0;
            for block in full.chunks(ROW_CHUNK) {
                for (w, &[lo, hi]) in tmp.iter_mut().zip(block) {
                    *w = bf16_bits(lo) | (bf16_bits(hi) << 16);
                }
                for (p, &w) in tmp.iter().enumerate().take(block.len()) {
                    if let Some(slot) = panel.get_mut((p0 + p) * PANEL + r) {
                        *slot = w;
                    }
                }
                p0 += block.len();
            }
            if let Some(&lo) = odd.first() {
                if let Some(slot) = panel.get_mut(p0 * PANEL + r) {
                    *slot = bf16_bits(lo);
                }
            }
        }
    }
    for (&b, &s) in bv.iter().zip(sv.iter()) {
        big = if b > big || b.is_nan() { b } else { big };
        small = if s < small { s } else { small };
    }
    // NaN (`big` NaN) and infinities fail the range test.
    let in_range = big <= MAX_MAGNITUDE && (small >= MIN_MAGNITUDE || small == f32::INFINITY);
    if !in_range {
        return None;
    }
    for (i, t) in terms_ws.iter_mut().enumerate() {
        let n = if i < count {
            norms.get(i).copied().unwrap_or(0.0)
        } else {
            1.0
        };
        *t = match rank {
            Rank::Sq => n,
            Rank::Cosine => 1.0 / n,
            Rank::NegDot => 0.0,
        };
    }
    Some(Packed {
        words,
        terms: terms_ws,
        panel_len,
        pairs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    /// The packing written element by element: panel words and terms, or `None`.
    fn reference(rank: Rank, rows: &[f32], dim: usize, count: usize) -> Option<Vec<u32>> {
        let ok = rows[..count * dim].iter().all(|v| {
            let m = v.abs();
            m == 0.0 || (MIN_MAGNITUDE..=MAX_MAGNITUDE).contains(&m)
        });
        if !ok {
            return None;
        }
        let pairs = dim.div_ceil(2);
        let panels = count.div_ceil(PANEL);
        let mut out = vec![0_u32; panels * PANEL * pairs];
        let bits = |x: f32| {
            let b = x.to_bits();
            b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16
        };
        for i in 0..count {
            for p in 0..pairs {
                let lo = rows[i * dim + 2 * p];
                let hi = if 2 * p + 1 < dim {
                    rows[i * dim + 2 * p + 1]
                } else {
                    0.0
                };
                out[(i / PANEL) * PANEL * pairs + p * PANEL + i % PANEL] =
                    bits(lo) | (bits(hi) << 16);
            }
        }
        let _ = rank;
        Some(out)
    }

    #[test]
    fn packing_matches_the_element_by_element_form() {
        let specials = [
            0.0,
            -0.0,
            1.5,
            -3.25e-7,
            7.0e17,
            f32::NAN,
            f32::INFINITY,
            1.0e-35,
            2.0e18,
        ];
        for (dim, count) in [
            (1, 1),
            (2, 3),
            (7, 17),
            (16, 16),
            (33, 40),
            (64, 5),
            (130, 18),
        ] {
            for special in [None, Some(0), Some(3), Some(5), Some(6), Some(7), Some(8)] {
                let mut rows: Vec<f32> = (0..count * dim)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                    .collect();
                if let Some(s) = special {
                    let at = (count * dim) / 2;
                    rows[at] = specials[s];
                }
                let norms = vec![2.0_f32; count];
                let mut ws = vec![f32::NAN; pack_len(count, dim)];
                let got = pack_rows(Rank::Sq, &rows, dim, count, &norms, &mut ws)
                    .map(|p| p.words.to_vec());
                let want = reference(Rank::Sq, &rows, dim, count);
                assert_eq!(got, want, "dim {dim} count {count} special {special:?}");
            }
        }
    }
}
