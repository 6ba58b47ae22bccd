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

/// `x` rounded to bf16 (to nearest, ties to even), as its 16 bits; NaN stays NaN.
#[inline(always)]
fn bf16_bits(x: f32) -> u32 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let b = x.to_bits();
    b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16
}

/// Rows packed for the filter: `words` in panels, one term per packed row.
#[derive(Clone, Copy)]
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
    let mut in_range = true;
    for (pi, panel) in words.chunks_exact_mut(panel_len).enumerate() {
        for r in 0..PANEL {
            let i = pi * PANEL + r;
            let row = if i < count {
                rows.get(i * dim..(i + 1) * dim).unwrap_or_default()
            } else {
                &[]
            };
            for (p, pair) in row.chunks(2).enumerate() {
                let lo = pair.first().copied().unwrap_or(0.0);
                let hi = pair.get(1).copied().unwrap_or(0.0);
                for v in [lo, hi] {
                    let m = v.abs();
                    in_range &= m == 0.0 || (MIN_MAGNITUDE..=MAX_MAGNITUDE).contains(&m);
                }
                if let Some(w) = panel.get_mut(p * PANEL + r) {
                    *w = bf16_bits(lo) | (bf16_bits(hi) << 16);
                }
            }
            if row.is_empty() {
                for p in 0..pairs {
                    if let Some(w) = panel.get_mut(p * PANEL + r) {
                        *w = 0;
                    }
                }
            }
        }
    }
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
