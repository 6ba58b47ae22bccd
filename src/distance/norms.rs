//! Row norms and L2 normalisation ([`row_norms`], [`l2_normalize`] and its backward
//! pass), and the clamped norms the cosine kernels divide by. Every norm goes through
//! [`scaled_norm_with`], which rescales a row by an exact power of two when its plain sum
//! of squares would overflow or underflow, so every finite row has a finite, accurate
//! norm.

use super::{clamp_norm, pow2_inverse, NORM_EPS, SAFE_SQ_MIN};
use crate::error::Error;
use crate::math;
use crate::matrix::Matrix;
use crate::simd::{self, Backend, Kernel, Simd};
use crate::validate::check_len;

/// `(r, c)` with `|row| = r / c`: `c` is a power of two (1 unless the plain sum of
/// squares overflows or underflows) and `r` the norm of the exactly scaled row `c row`,
/// so every finite row has a finite, accurate `r` (the `hypot` idea, with one extra pass
/// over the row in the rare scaled case only). NaN rows give a NaN `r`; a row holding an
/// infinity gives `r = inf`.
#[inline(always)]
pub(crate) fn scaled_norm_with<S: Simd>(s: S, row: &[f32]) -> (f32, f32) {
    let sq = simd::dot_with(s, row, row);
    if sq.is_nan() || (SAFE_SQ_MIN..=f32::MAX).contains(&sq) {
        return (math::sqrt(sq), 1.0);
    }
    let m = row.iter().fold(0.0_f32, |m, v| m.max(v.abs()));
    if m == 0.0 || m.is_infinite() {
        return (math::sqrt(sq), 1.0);
    }
    let c = pow2_inverse(m);
    let vc = s.splat(c);
    let (mut a0, mut a1) = (s.zero(), s.zero());
    let mut chunks = row.chunks(S::LANES);
    while let Some(x0) = chunks.next() {
        let v = s.mul(s.load(x0), vc);
        a0 = s.fma(v, v, a0);
        if let Some(x1) = chunks.next() {
            let v = s.mul(s.load(x1), vc);
            a1 = s.fma(v, v, a1);
        }
    }
    (math::sqrt(s.reduce_add(s.add(a0, a1))), c)
}

/// The norm `|row|` through [`scaled_norm_with`]: infinite only where the exact norm
/// exceeds `f32::MAX`.
#[inline(always)]
pub(crate) fn norm_with<S: Simd>(s: S, row: &[f32]) -> f32 {
    let (r, c) = scaled_norm_with(s, row);
    if c == 1.0 {
        r
    } else {
        r / c
    }
}

/// Kernel of [`clamped_row_norms`].
struct ClampedNorms<'a, 'o> {
    x: Matrix<'a>,
    out: &'o mut [f32],
}
impl Kernel for ClampedNorms<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        for (row, n) in self.x.row_iter().zip(self.out.iter_mut()) {
            *n = clamp_norm(norm_with(s, row));
        }
    }
}

/// Kernel of [`row_norms`].
struct RowNorms<'a, 'o> {
    x: Matrix<'a>,
    out: &'o mut [f32],
}
impl Kernel for RowNorms<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        for (row, o) in self.x.row_iter().zip(self.out.iter_mut()) {
            *o = norm_with(s, row);
        }
    }
}

/// Kernel of [`l2_normalize`].
struct Normalize<'a, 'o> {
    x: Matrix<'a>,
    out: &'o mut [f32],
}
impl Kernel for Normalize<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        for (row, o) in self
            .x
            .row_iter()
            .zip(self.out.chunks_exact_mut(self.x.dim()))
        {
            let (r, c) = scaled_norm_with(s, row);
            if c == 1.0 {
                simd::scale_into_with(s, 1.0 / clamp_norm(r), row, o);
            } else if r / c < NORM_EPS {
                simd::scale_into_with(s, 1.0 / NORM_EPS, row, o);
            } else {
                // (x c) / r: the exact scaling first, so neither |x| nor 1 / |x| is formed.
                scaled_unit_row(s, row, c, r, o);
            }
        }
    }
}

/// `out = (c x) * (1 / r)`: the unit row of `x` from [`scaled_norm_with`]'s `(r, c)`.
#[inline(always)]
fn scaled_unit_row<S: Simd>(s: S, row: &[f32], c: f32, r: f32, out: &mut [f32]) {
    let (vc, vi) = (s.splat(c), s.splat(1.0 / r));
    for (xc, oc) in row.chunks(S::LANES).zip(out.chunks_mut(S::LANES)) {
        s.store(s.mul(s.mul(s.load(xc), vc), vi), oc);
    }
}

/// Kernel of [`l2_normalize_backward`].
struct NormalizeBackward<'a, 'o> {
    x: Matrix<'a>,
    grad_out: &'a [f32],
    grad_x: &'o mut [f32],
}
impl Kernel for NormalizeBackward<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        let dim = self.x.dim();
        for ((row, g), gx) in self
            .x
            .row_iter()
            .zip(self.grad_out.chunks_exact(dim))
            .zip(self.grad_x.chunks_exact_mut(dim))
        {
            let (rs, scale) = scaled_norm_with(s, row);
            let r = if scale == 1.0 { rs } else { rs / scale };
            // A NaN norm takes this branch and propagates.
            if scale != 1.0 && r > NORM_EPS {
                // A row whose squared norm overflows (or underflows): the same formula
                // from the exactly scaled row, y = (x scale) / rs.
                let inv = 1.0 / rs;
                let yg: f32 = row
                    .iter()
                    .zip(g)
                    .map(|(&xk, &gk)| xk * scale * inv * gk)
                    .sum();
                let c = yg * inv * scale;
                for ((o, &gk), &xk) in gx.iter_mut().zip(g).zip(row) {
                    *o = gk * (inv * scale) - c * (xk * scale * inv);
                }
            } else if r.is_nan() || r > NORM_EPS {
                let inv = 1.0 / r;
                // With y = x / r: grad = (g - y <y, g>) / r, formed as
                // g / r - (<x, g / r> / r) (x / r). Every intermediate keeps the scale of
                // g / r, of y, or of <y, g> (the products x_k (g_k / r)), so none
                // underflows unless g itself is that small. Shorter forms did: for long
                // rows `x (<x, g> / r^3)` (|x| ~ 1e17: 1 / r^3 ~ 1e-51) left a residue of
                // about 1e-29 where the gradient is 0; for short rows `<x, g> / r^2`
                // (|x| ~ 4e-11, |g| ~ 1e-30: <x, g> ~ 4e-41, subnormal) left 3e-25.
                simd::scale_into_with(s, inv, g, gx);
                let c = simd::dot_with(s, row, gx) * inv;
                for (o, &xk) in gx.iter_mut().zip(row) {
                    *o -= c * (xk * inv);
                }
            } else {
                simd::scale_into_with(s, 1.0 / NORM_EPS, g, gx);
            }
        }
    }
}

/// Euclidean norm of every row: `out[i] = |x_i|`. `out` has exactly `rows` elements.
/// Scalar twin: [`crate::scalar::row_norms`].
///
/// # Errors
///
/// [`Error::LengthMismatch`] (`"out"`) when `out.len() != rows`.
///
/// # Numerics
///
/// Relative error at most `(d / 8 + 10) * 2^-24` against the exact norm, for every finite
/// row whose norm is a normal `f32` (a norm below `1.2e-38` is rounded to the subnormal
/// grid, an absolute error of at most `2^-150`): when the plain sum of squares would
/// overflow (`|x|` above about `1.8e19`) or lose
/// terms to underflow (`|x|` below about `9e-13`), the row is first scaled by an exact
/// power of two, as `hypot` does. The result is infinite only where the exact norm
/// exceeds `f32::MAX`.
///
/// # Example
///
/// ```
/// use triplet_kernels::{row_norms, Matrix};
/// let x = Matrix::new(&[3.0, 4.0, 0.0, 0.0], 2, 2)?;
/// let mut out = [0.0_f32; 2];
/// row_norms(x, &mut out)?;
/// assert_eq!(out, [5.0, 0.0]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn row_norms(x: Matrix<'_>, out: &mut [f32]) -> Result<(), Error> {
    check_len("out", x.rows(), out.len())?;
    Backend::active().dispatch(RowNorms { x, out });
    Ok(())
}

/// L2-normalises every row: `out_i = x_i / max(|x_i|, 1e-12)` (PyTorch's `F.normalize`).
/// A zero row stays zero. `out` has exactly `rows * dim` elements. Scalar twin:
/// [`crate::scalar::l2_normalize`]. Backward pass: [`l2_normalize_backward`].
///
/// # Errors
///
/// [`Error::LengthMismatch`] (`"out"`) when `out.len() != rows * dim`.
///
/// # Numerics
///
/// Each element within `(d / 8 + 12) * 2^-24` relative of the exact quotient. The norm is
/// taken as in [`row_norms`], so every finite non-zero row has a finite unit image, also
/// when its squared norm overflows `f32` (`[1.9e19, 0]` becomes `[1, 0]`).
///
/// # Example
///
/// ```
/// use triplet_kernels::{l2_normalize, Matrix};
/// let x = Matrix::new(&[3.0, 4.0], 1, 2)?;
/// let mut out = [0.0_f32; 2];
/// l2_normalize(x, &mut out)?;
/// assert_eq!(out, [0.6, 0.8]);
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn l2_normalize(x: Matrix<'_>, out: &mut [f32]) -> Result<(), Error> {
    l2_normalize_on(Backend::active(), x, out)
}

/// [`l2_normalize`] with the caller's backend.
pub(crate) fn l2_normalize_on(
    backend: Backend,
    x: Matrix<'_>,
    out: &mut [f32],
) -> Result<(), Error> {
    check_len("out", x.len(), out.len())?;
    backend.dispatch(Normalize { x, out });
    Ok(())
}

/// Gradient of [`l2_normalize`]: given `x` and `grad_out = dL/dy` for `y = normalize(x)`,
/// writes `grad_x = dL/dx`.
///
/// With `r = |x|`: when `r > 1e-12`, `grad_x = (grad_out - y <y, grad_out>) / r`;
/// otherwise (the clamp is active) `grad_x = grad_out / 1e-12`, the derivative of the
/// clamped formula. Scalar twin: [`crate::scalar::l2_normalize_backward`].
///
/// # Errors
///
/// [`Error::LengthMismatch`] (`"grad_out"` or `"grad_x"`) when either buffer does not have
/// `rows * dim` elements.
///
/// # Numerics
///
/// Error bounded by `(2 d / 8 + 20) * 2^-24 * (|grad_out| / r)` per element while the
/// intermediates `grad_out / r` and `<y, grad_out>` stay in `f32`'s normal range (above
/// about `1.2e-38`). Below it they round to multiples of `2^-149`, which adds an absolute
/// error of at most `(d + 3) (1 + 1 / r) 2^-150` (under `7e-34 (d + 3)` for any
/// `r > 1e-12`).
///
/// # Example
///
/// ```
/// use triplet_kernels::{l2_normalize_backward, Matrix};
/// let x = Matrix::new(&[3.0, 4.0], 1, 2)?;
/// // Moving along x itself does not change the normalised vector.
/// let mut gx = [9.0_f32; 2];
/// l2_normalize_backward(x, &[0.6, 0.8], &mut gx)?;
/// assert!(gx.iter().all(|g| g.abs() < 1e-7));
/// # Ok::<(), triplet_kernels::Error>(())
/// ```
#[cfg_attr(feature = "no-panic", no_panic::no_panic)]
pub fn l2_normalize_backward(
    x: Matrix<'_>,
    grad_out: &[f32],
    grad_x: &mut [f32],
) -> Result<(), Error> {
    l2_normalize_backward_on(Backend::active(), x, grad_out, grad_x)
}

/// [`l2_normalize_backward`] with the caller's backend.
pub(crate) fn l2_normalize_backward_on(
    backend: Backend,
    x: Matrix<'_>,
    grad_out: &[f32],
    grad_x: &mut [f32],
) -> Result<(), Error> {
    check_len("grad_out", x.len(), grad_out.len())?;
    check_len("grad_x", x.len(), grad_x.len())?;
    backend.dispatch(NormalizeBackward {
        x,
        grad_out,
        grad_x,
    });
    Ok(())
}

/// Clamped norms of every row into `norms` (`rows` elements), for kernels that need
/// cosine distances and their gradients.
pub(crate) fn clamped_row_norms(backend: Backend, x: &Matrix<'_>, norms: &mut [f32]) {
    backend.dispatch(ClampedNorms { x: *x, out: norms });
}
