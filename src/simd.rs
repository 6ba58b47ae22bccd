//! The private SIMD seam: the only module that names vector types.
//!
//! Kernels call the slice-level primitives below (`dot`, `sq_dist`, `sq_norm`, `axpy`,
//! ...); none of them sees a lane type. The portable backend is `wide`'s `f32x8`, whose
//! code path is fixed at compile time by the target features of the build (SSE2 on a
//! default x86-64 build, AVX2/FMA with `-C target-cpu=x86-64-v3`, NEON on aarch64, plain
//! scalar code elsewhere). A runtime-dispatched backend slots in here, behind the same
//! functions, without touching any kernel.
//!
//! Accumulation order: eight lanes, two independent accumulators, each lane summing every
//! sixteenth element, then a horizontal sum, then the scalar tail. `mul_add` is a fused
//! multiply-add only where the build enables FMA, so the last bits of a result may differ
//! between builds; the documented error bound holds for all of them.

use wide::f32x8;

/// Lanes of the portable vector type.
pub(crate) const LANES: usize = 8;

#[inline(always)]
fn load(chunk: &[f32; LANES]) -> f32x8 {
    f32x8::new(*chunk)
}

/// Lane-wise reduction of two equally long slices: `step(acc, a, b)` over full vectors,
/// `tail(acc, a, b)` over the remainder. Slices are cut to the shorter length.
#[inline(always)]
fn fold2(
    a: &[f32],
    b: &[f32],
    step: impl Fn(f32x8, f32x8, f32x8) -> f32x8,
    tail: impl Fn(f32, f32, f32) -> f32,
) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (a.split_at(n).0, b.split_at(n).0);
    let (a16, a_rest) = a.as_chunks::<{ 2 * LANES }>();
    let (b16, b_rest) = b.as_chunks::<{ 2 * LANES }>();
    let mut acc0 = f32x8::ZERO;
    let mut acc1 = f32x8::ZERO;
    for (x, y) in a16.iter().zip(b16) {
        let (x0, x1) = x.split_at(LANES);
        let (y0, y1) = y.split_at(LANES);
        // Both halves are exactly LANES long; the conversions cannot fail.
        if let (Ok(x0), Ok(x1), Ok(y0), Ok(y1)) = (
            <&[f32; LANES]>::try_from(x0),
            <&[f32; LANES]>::try_from(x1),
            <&[f32; LANES]>::try_from(y0),
            <&[f32; LANES]>::try_from(y1),
        ) {
            acc0 = step(acc0, load(x0), load(y0));
            acc1 = step(acc1, load(x1), load(y1));
        }
    }
    let (a8, a_tail) = a_rest.as_chunks::<LANES>();
    let (b8, b_tail) = b_rest.as_chunks::<LANES>();
    for (x, y) in a8.iter().zip(b8) {
        acc0 = step(acc0, load(x), load(y));
    }
    let mut s = (acc0 + acc1).reduce_add();
    for (&x, &y) in a_tail.iter().zip(b_tail) {
        s = tail(s, x, y);
    }
    s
}

/// `sum a_i b_i`.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    fold2(a, b, |acc, x, y| x.mul_add(y, acc), |s, x, y| x * y + s)
}

/// `sum (a_i - b_i)^2`, computed directly (no cancellation: exact zero for equal rows).
#[inline]
pub(crate) fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    fold2(
        a,
        b,
        |acc, x, y| {
            let d = x - y;
            d.mul_add(d, acc)
        },
        |s, x, y| {
            let d = x - y;
            d * d + s
        },
    )
}

/// `sum a_i^2`.
#[inline]
pub(crate) fn sq_norm(a: &[f32]) -> f32 {
    dot(a, a)
}

/// `y += alpha * x` over the common length.
#[inline]
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (x.split_at(n).0, y.split_at_mut(n).0);
    let va = f32x8::splat(alpha);
    let (x8, x_tail) = x.as_chunks::<LANES>();
    let (y8, y_tail) = y.as_chunks_mut::<LANES>();
    for (xc, yc) in x8.iter().zip(y8.iter_mut()) {
        *yc = load(xc).mul_add(va, load(yc)).to_array();
    }
    for (xv, yv) in x_tail.iter().zip(y_tail.iter_mut()) {
        *yv += xv * alpha;
    }
}

/// `y = alpha * x` over the common length.
#[inline]
pub(crate) fn scale_into(alpha: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    let (x, y) = (x.split_at(n).0, y.split_at_mut(n).0);
    let va = f32x8::splat(alpha);
    let (x8, x_tail) = x.as_chunks::<LANES>();
    let (y8, y_tail) = y.as_chunks_mut::<LANES>();
    for (xc, yc) in x8.iter().zip(y8.iter_mut()) {
        *yc = (load(xc) * va).to_array();
    }
    for (xv, yv) in x_tail.iter().zip(y_tail.iter_mut()) {
        *yv = xv * alpha;
    }
}

/// `sum (a_i - b_i + offset)^2`: the squared norm of a shifted difference (PyTorch adds
/// its `eps` to the difference vector before taking the norm). `offset = 0` is
/// [`sq_dist`].
#[inline]
pub(crate) fn sq_dist_offset(a: &[f32], b: &[f32], offset: f32) -> f32 {
    let vo = f32x8::splat(offset);
    fold2(
        a,
        b,
        |acc, x, y| {
            let d = x - y + vo;
            d.mul_add(d, acc)
        },
        |s, x, y| {
            let d = x - y + offset;
            d * d + s
        },
    )
}

/// `y += alpha * (a - b + offset)` over the common length, the difference formed before
/// scaling (no cancellation between two separate updates when `a` and `b` are close).
#[inline]
pub(crate) fn axpy_diff(alpha: f32, a: &[f32], b: &[f32], offset: f32, y: &mut [f32]) {
    let n = a.len().min(b.len()).min(y.len());
    let (a, b, y) = (a.split_at(n).0, b.split_at(n).0, y.split_at_mut(n).0);
    let va = f32x8::splat(alpha);
    let vo = f32x8::splat(offset);
    let (a8, a_tail) = a.as_chunks::<LANES>();
    let (b8, b_tail) = b.as_chunks::<LANES>();
    let (y8, y_tail) = y.as_chunks_mut::<LANES>();
    for ((ac, bc), yc) in a8.iter().zip(b8).zip(y8.iter_mut()) {
        *yc = (load(ac) - load(bc) + vo).mul_add(va, load(yc)).to_array();
    }
    for ((av, bv), yv) in a_tail.iter().zip(b_tail).zip(y_tail.iter_mut()) {
        *yv += (av - bv + offset) * alpha;
    }
}

/// `y *= alpha` in place.
#[inline]
pub(crate) fn scale(alpha: f32, y: &mut [f32]) {
    let va = f32x8::splat(alpha);
    let (y8, y_tail) = y.as_chunks_mut::<LANES>();
    for yc in y8.iter_mut() {
        *yc = (load(yc) * va).to_array();
    }
    for yv in y_tail.iter_mut() {
        *yv *= alpha;
    }
}
