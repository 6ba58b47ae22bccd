//! Argmin and argmax over a row of candidates, ties to the smallest index: the selection
//! step of every miner. Non-candidates are marked by the neutral value (`-inf` for a
//! maximum, `+inf` for a minimum) or NaN, never chosen; a row without a candidate gives
//! [`NO_INDEX`].

use super::NO_INDEX;
use crate::simd::{Simd, MAX_LANES};

/// Index of the largest value of `buf`, ties to the smallest index; [`NO_INDEX`] when
/// `buf` holds no candidate (every value `-inf` or NaN). See [`arg_extreme`].
#[inline(always)]
pub(super) fn argmax<S: Simd>(s: S, buf: &[f32]) -> u32 {
    arg_extreme(s, buf, true)
}

/// Index of the smallest value of `buf`, ties to the smallest index; [`NO_INDEX`] when
/// `buf` holds no candidate (every value `+inf` or NaN). See [`arg_extreme`].
#[inline(always)]
pub(super) fn argmin<S: Simd>(s: S, buf: &[f32]) -> u32 {
    arg_extreme(s, buf, false)
}

/// Index of the largest (`max`) or smallest value of `buf`, ties to the smallest index;
/// [`NO_INDEX`] when the extreme is the neutral value (`-inf` for `max`, `+inf`
/// otherwise), that is when `buf` holds no candidate. NaN values are never chosen.
///
/// The extreme comes from a vector pass of `min`/`max` (every lane keeps the extreme of
/// the positions congruent to it); the index is then searched only in the lanes that
/// hold the extreme, first position first.
#[inline(always)]
fn arg_extreme<S: Simd>(s: S, buf: &[f32], max: bool) -> u32 {
    let l = S::LANES;
    let neutral = if max {
        f32::NEG_INFINITY
    } else {
        f32::INFINITY
    };
    let mut acc = s.splat(neutral);
    let mut chunks = buf.chunks_exact(l);
    for c in chunks.by_ref() {
        // Candidate first: a NaN candidate keeps the accumulator.
        acc = if max {
            s.max(s.load(c), acc)
        } else {
            s.min(s.load(c), acc)
        };
    }
    let rem = chunks.remainder();
    // Lanes past `l` keep the neutral value.
    let mut lanes = [neutral; MAX_LANES];
    s.store(acc, &mut lanes);
    let mut m = extreme_of(&lanes, max);
    for &v in rem {
        let better = if max { v > m } else { v < m };
        m = if better { v } else { m };
    }
    if m == neutral {
        return NO_INDEX;
    }
    let full = buf.len() - rem.len();
    // Lanes holding the extreme, as a bit mask (usually one bit).
    let mut hits = 0_u32;
    for (b, &v) in lanes.iter().enumerate() {
        hits |= u32::from(v == m) << b;
    }
    let mut best = NO_INDEX;
    while hits != 0 {
        let lane = hits.trailing_zeros() as usize;
        hits &= hits - 1;
        let mut j = lane;
        while j < full {
            if buf.get(j).is_some_and(|&x| x == m) {
                best = best.min(j as u32);
                break;
            }
            j += l;
        }
    }
    if best == NO_INDEX {
        if let Some(k) = rem.iter().position(|&x| x == m) {
            best = (full + k) as u32;
        }
    }
    best
}

/// The largest (`max`) or smallest of `MAX_LANES` values (no NaN), by a fixed tree of
/// halves.
#[inline(always)]
fn extreme_of(v: &[f32; MAX_LANES], max: bool) -> f32 {
    let mut h = *v;
    let mut w = MAX_LANES / 2;
    while w > 0 {
        for i in 0..MAX_LANES / 2 {
            if i < w {
                let (a, b) = (h[i], h[i + w]);
                let better = if max { b > a } else { b < a };
                h[i] = if better { b } else { a };
            }
        }
        w /= 2;
    }
    h[0]
}
