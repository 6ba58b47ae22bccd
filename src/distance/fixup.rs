//! The accuracy fix-up of Gram-form distances, for the kernels that decide on them (the
//! miners, the batch losses, the quadruplet miner).
//!
//! A Gram-form value `|a|^2 - 2 <a, b> + |b|^2` is accurate relative to the rows' norms,
//! not to the distance. For the Euclidean metrics, every value `S` (a squared distance)
//! with `4 S < |a|^2 + |b|^2` ([`needs_direct`]) is recomputed directly as
//! `sum (a_i - b_i)^2`, and a block in which more than one value in eight needs it is
//! recomputed whole in [`DistanceMode::Direct`]; the bounds this gives are in
//! [`crate::mining`]'s [accuracy notes](crate::mining#distances-and-their-accuracy).
//! Cosine distances are the same in both forms and are left alone.

use super::{
    clamped_row_norms, euclidean_from_sq, pairwise_distances_rows_on, DistanceMode, Metric,
};
use crate::error::Error;
use crate::matrix::Matrix;
use crate::simd::{self, Backend, Kernel, Simd};

/// Squared row norms.
struct SqNorms<'a, 'o> {
    x: Matrix<'a>,
    out: &'o mut [f32],
}
impl Kernel for SqNorms<'_, '_> {
    type Output = ();
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) {
        for (row, o) in self.x.row_iter().zip(self.out.iter_mut()) {
            *o = simd::dot_with(s, row, row);
        }
    }
}

/// The per-row norm terms the fused kernels need: squared norms for the Euclidean metrics
/// (the fix-up test), clamped norms for cosine (the gradient). `out` has `rows` elements.
pub(crate) fn metric_norms(backend: Backend, x: &Matrix<'_>, metric: Metric, out: &mut [f32]) {
    match metric {
        Metric::Cosine => clamped_row_norms(backend, x, out),
        Metric::SquaredEuclidean | Metric::Euclidean => {
            backend.dispatch(SqNorms { x: *x, out });
        }
    }
}

/// Whether a Gram-form value `v` (a squared distance, or its square root when
/// `!squared`) is too small against the squared norms `na + nb` to keep full relative
/// accuracy: `4 S < |a|^2 + |b|^2`.
#[inline(always)]
pub(crate) fn needs_direct(v: f32, squared: bool, na: f32, nb: f32) -> bool {
    let sq = if squared { v } else { v * v };
    4.0 * sq < na + nb
}

/// Outcome of [`FixUp`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fix {
    /// Every value is now accurate.
    Done,
    /// Too many values need the direct form: recompute the whole block directly.
    Direct,
}

/// Recomputes directly the Gram-form values of a `rows x cols` block that are too small
/// against their rows' norms (see [`needs_direct`]), or asks for a direct block when more
/// than one in eight are.
struct FixUp<'a, 'o> {
    out: &'o mut [f32],
    cols: usize,
    /// Rows of the block (`rows x d`).
    ax: &'a [f32],
    /// Columns of the block (`cols x d`).
    bx: &'a [f32],
    /// Squared norms of the rows and of the columns.
    an: &'a [f32],
    bn: &'a [f32],
    d: usize,
    squared: bool,
    /// Row `r`'s own entry (an exact zero, left alone) is at column `r + off`.
    self_off: Option<usize>,
}

impl Kernel for FixUp<'_, '_> {
    type Output = Fix;
    #[inline(always)]
    fn run<S: Simd, const MR: usize, const NV: usize>(self, s: S) -> Fix {
        let FixUp {
            out,
            cols,
            ax,
            bx,
            an,
            bn,
            d,
            squared,
            self_off,
        } = self;
        if cols == 0 || d == 0 {
            return Fix::Done;
        }
        let own = |r: usize| self_off.map_or(usize::MAX, |o| r.saturating_add(o));
        let mut flagged = 0_usize;
        let mut total = 0_usize;
        for (r, (orow, &na)) in out.chunks_exact(cols).zip(an).enumerate() {
            // Branch-free count (vectorised), then the own entry taken out again.
            let mut count = 0_u32;
            for (&v, &nb) in orow.iter().zip(bn) {
                count += u32::from(needs_direct(v, squared, na, nb));
            }
            let mut count = count as usize;
            if let (Some(&v), Some(&nb)) = (orow.get(own(r)), bn.get(own(r))) {
                count = count.saturating_sub(usize::from(needs_direct(v, squared, na, nb)));
            }
            flagged += count;
            total += orow.len();
        }
        if flagged == 0 {
            return Fix::Done;
        }
        if flagged > total / 8 {
            return Fix::Direct;
        }
        for ((r, orow), (&na, arow)) in out
            .chunks_exact_mut(cols)
            .enumerate()
            .zip(an.iter().zip(ax.chunks_exact(d)))
        {
            let skip = own(r);
            for (c, ((o, &nb), brow)) in orow.iter_mut().zip(bn).zip(bx.chunks_exact(d)).enumerate()
            {
                if c != skip && needs_direct(*o, squared, na, nb) {
                    let sq = simd::sq_dist_with(s, arow, brow);
                    *o = if squared {
                        sq
                    } else {
                        euclidean_from_sq(sq, arow, brow, 0.0)
                    };
                }
            }
        }
        Fix::Done
    }
}

/// Runs [`FixUp`] on a block of distances (rows `a` against columns `b`, their
/// [`metric_norms`] `an` and `bn`; row `r`'s own entry at column `r + self_off`, if any);
/// `true` when the caller must recompute the block in direct mode. Cosine blocks are left
/// as they are.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fix_up(
    backend: Backend,
    metric: Metric,
    out: &mut [f32],
    a: &Matrix<'_>,
    b: &Matrix<'_>,
    an: &[f32],
    bn: &[f32],
    self_off: Option<usize>,
) -> bool {
    let squared = match metric {
        Metric::Cosine => return false,
        Metric::SquaredEuclidean => true,
        Metric::Euclidean => false,
    };
    backend.dispatch(FixUp {
        out,
        cols: b.rows(),
        ax: a.as_slice(),
        bx: b.as_slice(),
        an,
        bn,
        d: a.dim(),
        squared,
        self_off,
    }) == Fix::Direct
}

/// The fused miners' accuracy fix-up applied to a whole matrix `dist` from
/// [`crate::pairwise_distances`]: Euclidean values too small against their rows' norms (see
/// [`needs_direct`]) are recomputed in the direct form, or the whole matrix when more
/// than one in eight are. `scratch` holds at least
/// [`crate::pairwise_distances_workspace_len`]`(n, d)` elements (garbage after). Cosine
/// distances are left as they are.
pub(crate) fn refine_pairwise(
    backend: Backend,
    x: &Matrix<'_>,
    metric: Metric,
    dist: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), Error> {
    if metric == Metric::Cosine {
        return Ok(());
    }
    let n = x.rows();
    let actual = scratch.len();
    let norms = scratch.get_mut(..n).ok_or(Error::WorkspaceTooSmall {
        required: n,
        actual,
    })?;
    metric_norms(backend, x, metric, norms);
    if fix_up(backend, metric, dist, x, x, norms, norms, Some(0)) {
        let mode = DistanceMode::Direct;
        pairwise_distances_rows_on(backend, *x, 0..n, metric, mode, dist, scratch)?;
    }
    Ok(())
}
