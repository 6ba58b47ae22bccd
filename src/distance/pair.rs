//! One pair of rows: its distance computed directly ([`distance`], [`distance_with`]) and
//! the pair gradient every loss accumulates through ([`pair_grad_with`] and its row and
//! backend forms), with the factors the fused batch kernels share with it.

use super::{pow2_inverse, Metric, NORM_EPS, SAFE_SQ_MIN};
use crate::math;
use crate::matrix::{two_rows_mut, Matrix};
use crate::simd::{self, Backend, Kernel, Simd};

/// One distance between two rows, computed directly (`sum (a_i - b_i)^2`, no Gram form);
/// `na`, `nb` are their clamped norms (read for cosine only, see
/// [`clamped_row_norms`](super::clamped_row_norms)): [`distance_with`] on `backend`, for
/// callers outside a [`Kernel`].
#[inline]
pub(crate) fn distance(
    backend: Backend,
    metric: Metric,
    a: &[f32],
    b: &[f32],
    na: f32,
    nb: f32,
) -> f32 {
    backend.dispatch(Distance {
        metric,
        a,
        b,
        na,
        nb,
    })
}

/// Kernel of [`distance`].
struct Distance<'a> {
    metric: Metric,
    a: &'a [f32],
    b: &'a [f32],
    na: f32,
    nb: f32,
}
impl Kernel for Distance<'_> {
    type Output = f32;
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) -> f32 {
        distance_with(s, self.metric, self.a, self.b, self.na, self.nb)
    }
}

/// One distance between two rows on the backend `s` (see [`distance`]), for code generic
/// over [`Simd`] (inlined into the caller's target-feature entry point).
#[inline(always)]
pub(crate) fn distance_with<S: Simd>(
    s: S,
    metric: Metric,
    a: &[f32],
    b: &[f32],
    na: f32,
    nb: f32,
) -> f32 {
    match metric {
        Metric::SquaredEuclidean => simd::sq_dist_with(s, a, b),
        Metric::Euclidean => euclidean_from_sq(simd::sq_dist_with(s, a, b), a, b, 0.0),
        Metric::Cosine => 1.0 - simd::dot_with(s, a, b) / (na * nb),
    }
}

/// `sqrt(sq)` for a directly computed squared distance `sq = sum (a_i - b_i + offset)^2`.
/// Below `2^-80` the sum may have lost its terms to underflow (rows `1e-23` apart give
/// `sq = 0`), so the distance is then recomputed from the difference scaled by an exact
/// power of two: positive for any two different rows, exactly 0 for equal ones.
#[inline(always)]
pub(crate) fn euclidean_from_sq(sq: f32, a: &[f32], b: &[f32], offset: f32) -> f32 {
    if sq.is_nan() || sq >= SAFE_SQ_MIN {
        return math::sqrt(sq);
    }
    let diff = |(&u, &v): (&f32, &f32)| u - v + offset;
    let m = a
        .iter()
        .zip(b)
        .map(diff)
        .fold(0.0_f32, |m, t| m.max(t.abs()));
    if m == 0.0 {
        return 0.0;
    }
    let c = pow2_inverse(m);
    let r: f32 = a
        .iter()
        .zip(b)
        .map(|p| {
            let t = diff(p) * c;
            t * t
        })
        .sum();
    math::sqrt(r) / c
}

/// The one pair gradient of the crate: adds `coef * d d(a, b) / d a` to `ga` and
/// `coef * d d(a, b) / d b` to `gb`, where `dist = d(a, b)`, `na`, `nb` are the clamped
/// norms (cosine only) and `offset` is PyTorch's shift of the difference vector
/// (Euclidean metrics only; 0 elsewhere). Every loss's gradient goes through it.
///
/// - squared Euclidean: `2 (a - b + offset)` and its negative;
/// - Euclidean: `(a - b + offset) / d` and its negative, 0 at `d = 0` (never NaN);
/// - cosine, `d = 1 - <a,b> / (na nb)`: `-b / (na nb) + (1 - d) a / na^2` for `a` (the
///   second term only where `|a|` is above the clamp, below it the norm is a constant),
///   symmetrically for `b`.
///
/// The Euclidean metrics form the difference `a - b` first and scale it once, in one pass
/// over both rows: the rounding error scales with `|a - b|`, not with `|a|` (two separate
/// updates `+c a`, `-c b` would lose the gradient of nearly coincident rows far from the
/// origin).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pair_grad_with<S: Simd>(
    s: S,
    metric: Metric,
    a: &[f32],
    b: &[f32],
    dist: f32,
    (na, nb): (f32, f32),
    offset: f32,
    coef: f32,
    ga: &mut [f32],
    gb: &mut [f32],
) {
    let k = match metric {
        Metric::SquaredEuclidean => 2.0 * coef,
        Metric::Euclidean if dist >= TINY_DISTANCE => coef / dist,
        Metric::Euclidean if dist > 0.0 => {
            // `coef / dist` could overflow: scale the difference and the distance by the
            // same exact power of two, so `(a - b) c / (dist c)` stays near unit size.
            let c = pow2_inverse(dist);
            pair_diff_update(a, b, offset, c, coef / (dist * c), ga, gb);
            return;
        }
        Metric::Euclidean => return,
        Metric::Cosine => {
            let own = |n: f32| cosine_own_factor(coef, dist, n);
            let cross = s.splat(-coef / (na * nb));
            let (sa, sb) = (s.splat(own(na)), s.splat(own(nb)));
            let l = S::LANES;
            for (((ac, bc), gac), gbc) in a
                .chunks(l)
                .zip(b.chunks(l))
                .zip(ga.chunks_mut(l))
                .zip(gb.chunks_mut(l))
            {
                let (av, bv) = (s.load(ac), s.load(bc));
                s.store(s.fma(sa, av, s.fma(cross, bv, s.load(gac))), gac);
                s.store(s.fma(sb, bv, s.fma(cross, av, s.load(gbc))), gbc);
            }
            return;
        }
    };
    let (vk, nk, vo) = (s.splat(k), s.splat(-k), s.splat(offset));
    let l = S::LANES;
    for (((ac, bc), gac), gbc) in a
        .chunks(l)
        .zip(b.chunks(l))
        .zip(ga.chunks_mut(l))
        .zip(gb.chunks_mut(l))
    {
        let diff = s.add(s.sub(s.load(ac), s.load(bc)), vo);
        s.store(s.fma(diff, vk, s.load(gac)), gac);
        s.store(s.fma(diff, nk, s.load(gbc)), gbc);
    }
}

/// Euclidean distances below this take the scaled path of [`pair_grad_with`]: above it,
/// `coef / dist` cannot overflow for any coefficient the losses form (`|coef| < 2^64`).
pub(crate) const TINY_DISTANCE: f32 = 5.421_011e-20; // 2^-64

/// `ga += k (c (a - b + offset))`, `gb -= ...`: the rare tiny-distance form of the pair
/// update, with the difference scaled by the exact power of two `c` first.
#[inline(always)]
fn pair_diff_update(
    a: &[f32],
    b: &[f32],
    offset: f32,
    c: f32,
    k: f32,
    ga: &mut [f32],
    gb: &mut [f32],
) {
    for (((&u, &v), x), y) in a.iter().zip(b).zip(ga.iter_mut()).zip(gb.iter_mut()) {
        let t = (u - v + offset) * c * k;
        *x += t;
        *y -= t;
    }
}

/// The factor `k` of a Euclidean-type pair gradient, `d d(a, b) / d a = k (a - b)`, for
/// a pair with coefficient `coef` at distance `dist`: `2 coef` for the squared distance,
/// `coef / dist` for the distance itself, 0 at `dist = 0` (where [`pair_grad_with`]
/// leaves the rows alone) and for a NaN distance.
#[inline(always)]
pub(crate) fn euclidean_grad_factor(squared: bool, coef: f32, dist: f32) -> f32 {
    if squared {
        2.0 * coef
    } else if dist > 0.0 {
        coef / dist
    } else {
        0.0
    }
}

/// The own-norm factor of the cosine pair gradient: `d d(a, b) / d a` holds
/// `coef (1 - d) a / |a|^2` for a pair with coefficient `coef` at distance `dist`, `norm`
/// being `|a|`; 0 where the norm is clamped at [`NORM_EPS`] (a constant there).
#[inline(always)]
pub(crate) fn cosine_own_factor(coef: f32, dist: f32, norm: f32) -> f32 {
    if norm > NORM_EPS {
        coef * (1.0 - dist) / (norm * norm)
    } else {
        0.0
    }
}

/// [`pair_grad_with`] on rows `i` and `j` of `x`, into the same rows of `grad`; nothing
/// when `i == j` (the derivative of `d(x_i, x_i)` is 0 for every metric).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pair_grad_rows_with<S: Simd>(
    s: S,
    metric: Metric,
    x: &Matrix<'_>,
    (i, j): (usize, usize),
    dist: f32,
    norms: (f32, f32),
    offset: f32,
    coef: f32,
    grad: &mut [f32],
) {
    let (Some(a), Some(b)) = (x.row(i), x.row(j)) else {
        return;
    };
    if let Some((ga, gb)) = two_rows_mut(grad, x.dim(), i, j) {
        pair_grad_with(s, metric, a, b, dist, norms, offset, coef, ga, gb);
    }
}

/// [`pair_grad_rows_with`] on `backend`, for callers outside a [`Kernel`].
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn pair_grad_rows(
    backend: Backend,
    metric: Metric,
    x: &Matrix<'_>,
    rows: (usize, usize),
    dist: f32,
    norms: (f32, f32),
    offset: f32,
    coef: f32,
    grad: &mut [f32],
) {
    backend.dispatch(PairGradRows {
        metric,
        x,
        rows,
        dist,
        norms,
        offset,
        coef,
        grad,
    });
}

/// Kernel of [`pair_grad_rows`].
struct PairGradRows<'a, 'x, 'g> {
    metric: Metric,
    x: &'a Matrix<'x>,
    rows: (usize, usize),
    dist: f32,
    norms: (f32, f32),
    offset: f32,
    coef: f32,
    grad: &'g mut [f32],
}
impl Kernel for PairGradRows<'_, '_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        pair_grad_rows_with(
            s,
            self.metric,
            self.x,
            self.rows,
            self.dist,
            self.norms,
            self.offset,
            self.coef,
            self.grad,
        );
    }
}
