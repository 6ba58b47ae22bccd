//! The register-blocked products of the batch-all gradient, beside the distance
//! microkernel of [`tile`](super::tile) that computes the distances it starts from.
//!
//! - [`gemm_acc`]: `out += C B` for a matrix of coefficients `C` (read with any row and
//!   column stride, so `C` or `C^T`) and row-major rows `B`. `GEMM_MR` rows of `out` by
//!   `GEMM_NV` vectors of columns are accumulated in registers while the rows of `B`
//!   stream through once per block of columns; each group's coefficients are packed
//!   first, contiguous in the order the inner loop reads them.
//! - [`symmetrise`]: sums a block's own square part with its transpose, through register
//!   transposes ([`Simd::transpose`]) of `LANES x LANES` tiles, so one product applies
//!   both halves.
//!
//! Both are generic over [`Simd`] and `#[inline(always)]`, so they compile into the
//! caller's target-feature entry point (see the [`crate::simd`] seam).

use crate::simd::{Simd, MAX_LANES};

/// Columns of the register block of [`gemm_acc`], in vectors.
const GEMM_NV: usize = 4;
/// Rows of the register block of [`gemm_acc`].
pub(crate) const GEMM_MR: usize = 4;

/// `out[r][:] += sum_t coef[r * rs + t * cs] * b[t][:]` for the rows `r` of `out` and the
/// rows `t` of `b` (both row-major with rows of `d`): a register-blocked GEMM
/// (`GEMM_MR` rows by `GEMM_NV` vectors of accumulators, `b` streamed once per block of
/// columns). The coefficients of each group of `GEMM_MR` rows are first packed into
/// `cpack` (`GEMM_MR` per row of `b`), contiguous in the order the inner loop reads them.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_acc<S: Simd>(
    s: S,
    coef: &[f32],
    rs: usize,
    cs: usize,
    b: &[f32],
    d: usize,
    out: &mut [f32],
    cpack: &mut [f32],
) {
    if d == 0 {
        return;
    }
    let l = S::LANES;
    let width = GEMM_NV * l;
    let kdim = b.len() / d;
    let Some(cpack) = kdim
        .checked_mul(GEMM_MR)
        .and_then(|len| cpack.get_mut(..len))
    else {
        return;
    };
    let mut rows = out.chunks_exact_mut(d);
    let mut r0 = 0;
    loop {
        // The next `GEMM_MR` rows of `out` (fewer at the end).
        let mut og: [Option<&mut [f32]>; GEMM_MR] = core::array::from_fn(|_| rows.next());
        if og[0].is_none() {
            break;
        }
        for (t, cp) in cpack.chunks_exact_mut(GEMM_MR).enumerate() {
            for (m, (c, orow)) in cp.iter_mut().zip(og.iter()).enumerate() {
                *c = if orow.is_some() {
                    coef.get((r0 + m) * rs + t * cs).copied().unwrap_or(0.0)
                } else {
                    0.0
                };
            }
        }
        let packed = &*cpack;
        let mut k0 = 0;
        while k0 < d {
            let mut acc = [[s.zero(); GEMM_NV]; GEMM_MR];
            for (am, orow) in acc.iter_mut().zip(og.iter()) {
                if let Some(orow) = orow {
                    let orow = orow.get(k0..).unwrap_or(&[]);
                    for (v, av) in am.iter_mut().enumerate() {
                        *av = s.load(orow.get(v * l..).unwrap_or(&[]));
                    }
                }
            }
            if k0 + width <= d {
                // Whole vectors: exact-width loads, no masks.
                for (cp, brow) in packed.chunks_exact(GEMM_MR).zip(b.chunks_exact(d)) {
                    let Some(bs) = brow.get(k0..k0 + width) else {
                        break;
                    };
                    let mut bv = [s.zero(); GEMM_NV];
                    for (x, c) in bv.iter_mut().zip(bs.chunks_exact(l)) {
                        *x = s.load(c);
                    }
                    gemm_step(s, &mut acc, cp, &bv);
                }
            } else {
                for (cp, brow) in packed.chunks_exact(GEMM_MR).zip(b.chunks_exact(d)) {
                    let bs = brow.get(k0..).unwrap_or(&[]);
                    let mut bv = [s.zero(); GEMM_NV];
                    for (v, x) in bv.iter_mut().enumerate() {
                        *x = s.load(bs.get(v * l..).unwrap_or(&[]));
                    }
                    gemm_step(s, &mut acc, cp, &bv);
                }
            }
            for (am, orow) in acc.iter().zip(og.iter_mut()) {
                if let Some(orow) = orow {
                    let orow = orow.get_mut(k0..).unwrap_or(&mut []);
                    for (v, av) in am.iter().enumerate() {
                        s.store(*av, orow.get_mut(v * l..).unwrap_or(&mut []));
                    }
                }
            }
            k0 += width;
        }
        r0 += GEMM_MR;
    }
}

/// One row of `b` into the accumulators: `acc[m][v] += cp[m] * bv[v]`.
#[inline(always)]
fn gemm_step<S: Simd>(
    s: S,
    acc: &mut [[S::V; GEMM_NV]; GEMM_MR],
    cp: &[f32],
    bv: &[S::V; GEMM_NV],
) {
    for (am, &c) in acc.iter_mut().zip(cp) {
        let cv = s.splat(c);
        for (av, &x) in am.iter_mut().zip(bv) {
            *av = s.fma(cv, x, *av);
        }
    }
}

/// Sums a block's own pair coefficients with their mirror images: for `r != c` in
/// `0..rows`, `block[r][i0 + c]` and `block[c][i0 + r]` (rows of `n`) both become
/// `block[r][i0 + c] + block[c][i0 + r]`; the diagonal is left as it is. Whole
/// `LANES x LANES` tiles go through register transposes, the edges element by element.
#[inline(always)]
pub(crate) fn symmetrise<S: Simd>(s: S, block: &mut [f32], n: usize, i0: usize, rows: usize) {
    let l = S::LANES;
    let full = if l <= MAX_LANES { rows / l * l } else { 0 };
    let mut av = [s.zero(); MAX_LANES];
    let mut bv = [s.zero(); MAX_LANES];
    let mut diag = [0.0_f32; MAX_LANES];
    for r0 in (0..full).step_by(l) {
        for c0 in (r0..full).step_by(l) {
            let (Some(a), Some(b)) = (av.get_mut(..l), bv.get_mut(..l)) else {
                return;
            };
            let on_diagonal = r0 == c0;
            if on_diagonal {
                for (t, d) in diag.iter_mut().enumerate().take(l) {
                    *d = block
                        .get((r0 + t) * n + i0 + r0 + t)
                        .copied()
                        .unwrap_or(0.0);
                }
            }
            for (t, v) in a.iter_mut().enumerate() {
                let start = (r0 + t) * n + i0 + c0;
                *v = s.load(block.get(start..start + l).unwrap_or(&[]));
            }
            for (t, v) in b.iter_mut().enumerate() {
                let start = (c0 + t) * n + i0 + r0;
                *v = s.load(block.get(start..start + l).unwrap_or(&[]));
            }
            s.transpose(b);
            for (x, y) in a.iter_mut().zip(b.iter()) {
                *x = s.add(*x, *y);
            }
            for (t, v) in a.iter().enumerate() {
                let start = (r0 + t) * n + i0 + c0;
                s.store(*v, block.get_mut(start..start + l).unwrap_or(&mut []));
            }
            s.transpose(a);
            for (t, v) in a.iter().enumerate() {
                let start = (c0 + t) * n + i0 + r0;
                s.store(*v, block.get_mut(start..start + l).unwrap_or(&mut []));
            }
            if on_diagonal {
                for (t, d) in diag.iter().enumerate().take(l) {
                    if let Some(x) = block.get_mut((r0 + t) * n + i0 + r0 + t) {
                        *x = *d;
                    }
                }
            }
        }
    }
    // The pairs with a column past the whole tiles.
    for r in 0..rows {
        for c in full.max(r + 1)..rows {
            let (u, v) = (r * n + i0 + c, c * n + i0 + r);
            if let (Some(&gu), Some(&gv)) = (block.get(u), block.get(v)) {
                let sum = gu + gv;
                if let Some(x) = block.get_mut(u) {
                    *x = sum;
                }
                if let Some(x) = block.get_mut(v) {
                    *x = sum;
                }
            }
        }
    }
}
